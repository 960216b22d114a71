#!/usr/bin/env bash
# Stop the dockerd that start-docker.sh started (local development; CI machines are discarded).
# dockerd stops running containers and its own containerd on SIGTERM.
set -euo pipefail
PID=$(cat /var/run/docker.pid 2>/dev/null || true)
if [ -z "$PID" ] || ! kill -0 "$PID" 2>/dev/null; then echo "dockerd is not running"; exit 0; fi
kill -TERM "$PID"
for _ in $(seq 30); do kill -0 "$PID" 2>/dev/null || { echo "dockerd stopped"; exit 0; }; sleep 1; done
echo "dockerd ignored SIGTERM for 30 s; killing it" >&2; kill -KILL "$PID"
