#!/usr/bin/env bash
# The offline plate solver stacks are solved with (lib/stacking/solve.py): Debian's astrometry.net and
# its Tycho-2 index files (about 150 MB; they cover fields from 30' up: S50, S30, S30 Pro).
# Installs them when run as root; otherwise prints the one command and exits 0, since CrowdSky works
# without them (stacks are then marked PLTSOLVD = F with the reason). `--strict`: exit 1 when missing.
set -uo pipefail
PACKAGES=(astrometry.net astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-09-littleendian
          astrometry-data-tycho2-10-19-littleendian)
present() {
  command -v solve-field >/dev/null && ls /usr/share/astrometry/index-tycho2-08*.fits >/dev/null 2>&1 \
    && ls /usr/share/astrometry/index-tycho2-09*.fits >/dev/null 2>&1 \
    && ls /usr/share/astrometry/index-tycho2-10*.fits >/dev/null 2>&1
}
present && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}" >/dev/null && present && exit 0
  echo "Installing the plate solver failed; stacks will not be plate solved." >&2
else
  echo "Plate solving needs: sudo apt-get install -y ${PACKAGES[*]}" >&2
fi
[ "${1:-}" = "--strict" ] && exit 1
exit 0
