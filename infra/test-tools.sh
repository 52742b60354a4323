#!/usr/bin/env bash
# Tools the test suite drives besides Python packages: Debian's headless Chromium (browser tests)
# and docker-compose v1 (validates infra/docker-compose.yml without a Docker engine).
set -euo pipefail
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
