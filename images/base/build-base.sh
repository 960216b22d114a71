#!/usr/bin/env bash
# Build the project's Debian bookworm base image locally, with no container registry
# (none is reachable here): debootstrap a minbase rootfs, then `docker import` it.
# Usage: images/base/build-base.sh [TAG]   (default gpujob-base:bookworm)
set -euo pipefail
TAG=${1:-gpujob-base:bookworm}
HERE=$(cd "$(dirname "$0")" && pwd)

docker info >/dev/null 2>&1 || "$HERE/../../.ci/start-docker.sh"
# A second CI run on the same machine reuses the image: debootstrap + import take about a minute.
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-base: $TAG already exists"; exit 0
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# Use the mirror this host's apt uses: it is the Debian host this machine can reach.
SOURCES=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' || true)
MIRROR=$(grep -oE 'https?://[^ ]+/debian/?( |$)' <<<"$SOURCES" | head -1 | tr -d ' ' || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=$(grep -oE 'https?://[^ ]+/debian-security/?' <<<"$SOURCES" | head -1 || true)

ROOT=$(mktemp -d /var/tmp/gpujob-base.XXXXXX)   # on disk, not tmpfs: a few hundred MB
trap 'rm -rf "$ROOT"' EXIT
echo "build-base: debootstrap bookworm from $MIRROR"
# minbase + only what the image's Dockerfiles need: a venv-capable python and CA roots.
timeout 900 debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -30 "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"

# Let derived images apt-get from the same mirror (plus security updates, if the host has them).
{
  echo "deb $MIRROR bookworm main"
  echo "deb $MIRROR bookworm-updates main"
  if [ -n "$SECURITY" ]; then echo "deb $SECURITY bookworm-security main"; fi
} >"$ROOT/etc/apt/sources.list"
# Trim caches and docs: they only make the image bigger.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/var/log/*.log
: >"$ROOT/etc/resolv.conf"; : >"$ROOT/etc/hostname"   # docker provides both at run time

# `docker import` sets no ENV/CMD, so give the image what a registry image would have.
tar --numeric-owner -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "build-base: built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
