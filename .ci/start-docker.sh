#!/usr/bin/env bash
# Make a working Docker engine available here and in CI. Idempotent: installs Debian's
# engine if dockerd is missing, starts dockerd if nothing answers, waits until it does.
set -euo pipefail
LOG=/var/log/dockerd.log
export DEBIAN_FRONTEND=noninteractive

if ! command -v dockerd >/dev/null; then
  apt-get update -qq
  # bookworm's docker.io (20.10) brings dockerd, containerd, runc, tini and iptables.
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

# `docker build --secret` and cache mounts need BuildKit. A recent docker CLI (this image has
# 28.x in /usr/local/bin, ahead of Debian's 20.10 one) only does BuildKit through the buildx
# plugin, which bookworm lacks. trixie's docker-buildx is one Go binary needing libc6 >= 2.34,
# so fetch just that .deb with a throwaway apt list: the host's apt sources stay bookworm-only.
if ! docker buildx version >/dev/null 2>&1; then
  T=$(mktemp -d); mkdir -p "$T/lists/partial"
  echo 'deb http://deb.debian.org/debian trixie main' >"$T/sources.list"
  A=(-o Dir::Etc::SourceList="$T/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$T/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
     -o APT::Sandbox::User=root)
  apt-get "${A[@]}" update -qq
  (cd "$T" && apt-get "${A[@]}" download -qq docker-buildx && dpkg -i docker-buildx_*.deb >/dev/null)
  rm -rf "$T"
fi

if ! docker info >/dev/null 2>&1; then
  # No init system here: detach dockerd into its own session so it outlives this script.
  # Defaults work in this VM (overlay2 on ext4; bridge network with iptables/nf_tables), so no
  # --storage-driver/--iptables/--bridge flags: dockerd picks overlay2 itself, else falls back.
  setsid nohup dockerd >>"$LOG" 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { echo "dockerd did not come up; tail of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; }
docker version -f 'docker: client {{.Client.Version}}, server {{.Server.Version}}'
