#!/usr/bin/env bash
# Run a command "on" one of the namespaced nodes that .ci/start-slurm-nodes.sh makes: in its
# network namespace, with its hostname and its /etc/hosts; the file system stays this machine's.
#   .ci/on-node.sh gpujob-node2 uv run gpujob run job.yaml --nnodes 2 --node-rank 1 --master-addr gpujob-node1
# Not `ip netns exec`: that remounts /sys without the cgroup mounts that slurmd needs.
set -euo pipefail
NS=$1; shift
[ -e "/run/netns/$NS" ] || { echo "no namespace $NS: run .ci/start-slurm-nodes.sh first" >&2; exit 2; }
exec nsenter --net="/run/netns/$NS" unshare --mount --uts --propagation slave \
  sh -c 'mount --bind "/etc/netns/$0/hosts" /etc/hosts && hostname "$0" && exec "$@"' "$NS" "$@"
