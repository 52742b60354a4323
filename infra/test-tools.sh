#!/usr/bin/env bash
# Tools the test suite drives besides Python packages: Debian's headless Chromium (browser tests),
# docker-compose v1 (validates infra/docker-compose.yml without a Docker engine) and the plate solver
# (astrometry.net + Tycho-2 index files, infra/plate-solver.sh).
set -euo pipefail
bash "$(dirname "$0")/plate-solver.sh" --strict
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Please install: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
