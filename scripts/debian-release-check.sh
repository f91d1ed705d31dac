#!/usr/bin/env bash
# Runs `make test` on a fresh clone of HEAD inside a Debian chroot of another release
# (default: 13, trixie), so a machine on one release can show the test suite passes on another
# without Docker. Needs root, debootstrap and the Debian package mirror.
#
#   sudo bash scripts/debian-release-check.sh            # trixie, root in /var/tmp/cartloom-trixie
#   SUITE=bookworm sudo bash scripts/debian-release-check.sh
#
# The chroot shares the host's kernel and loopback network (the tests choose free ports), and
# gets its own packages: python3 (3.13 on trixie), git, make, a compiler; `make test` then
# installs the test tools with apt inside it, as it does on any fresh machine.
# The log of the run is written to $LOG (default: the chroot's /root/make-test.log).
set -euo pipefail

SUITE=${SUITE:-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=${ROOT:-/var/tmp/cartloom-$SUITE}
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: debootstrap and chroot need it" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }

if [ ! -x "$ROOT/usr/bin/python3" ]; then
  echo "debootstrap $SUITE into $ROOT" >&2
  debootstrap --variant=minbase \
    --include=ca-certificates,git,make,python3,python3-venv,python3-dev,gcc,g++,procps,iproute2,curl \
    "$SUITE" "$ROOT" "$MIRROR" >/dev/null
fi

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" || true; done
}
trap cleanup EXIT
for fs in proc sys dev dev/pts dev/shm; do
  mkdir -p "$ROOT/$fs"
  mount --bind "/$fs" "$ROOT/$fs"
  mounted+=("$ROOT/$fs")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# What the host's network needs of every machine on it: its local CA certificates (a TLS proxy
# in front of the package registries) and pip's settings, as a new machine there would have.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"

rm -rf "$ROOT/src/cartloom"
mkdir -p "$ROOT/src"
git clone -q "$REPO" "$ROOT/src/cartloom"
echo "$(. "$ROOT/etc/os-release" && echo "$PRETTY_NAME"), $(chroot "$ROOT" python3 --version)," \
  "commit $(git -C "$ROOT/src/cartloom" rev-parse --short HEAD)" >&2

LOG=${LOG:-$ROOT/root/make-test.log}
chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 bash -c 'cd /src/cartloom && make test' 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
