#!/usr/bin/env bash
# Stop the slurmds, slurmctld and munged that start-slurm.sh and start-slurm-nodes.sh started
# (local development; CI machines are discarded), and remove the namespaced nodes' network
# (namespaces, bridge, /etc/netns files). KEEP_MUNGE=1 leaves munged and the network up
# (start-slurm.sh uses it to restart slurm after a config change). Running jobs die with slurmd;
# slurmctld keeps its state in /var/spool/slurmctld for the next start.
set -euo pipefail
# Live and not a zombie: PID 1 here reaps orphans only now and then, and kill -0 succeeds on zombies.
alive() { local s; s=$(ps -o stat= -p "$1") && [ "${s:0:1}" != Z ]; }
stop() {
  local PIDF=$1 d; d=$(basename "$PIDF" .pid); PID=$(cat "$PIDF" 2>/dev/null || true)
  if [ -z "$PID" ] || ! alive "$PID"; then echo "$d is not running"; rm -f "$PIDF"; return; fi
  kill -TERM "$PID"
  for _ in $(seq 30); do alive "$PID" || break; sleep 0.5; done
  if alive "$PID"; then echo "$d ignored SIGTERM for 15 s; killing it" >&2; kill -KILL "$PID"; fi
  rm -f "$PIDF"; echo "$d stopped"
}
# Every node's slurmd (slurmd-NODE.pid; slurmd.pid from before nodes had their own), then the controller.
for PIDF in /run/slurm/slurmd*.pid; do [ -e "$PIDF" ] && stop "$PIDF"; done
stop /run/slurm/slurmctld.pid
[ "${KEEP_MUNGE:-0}" = 1 ] && exit 0

for NS in gpujob-node1 gpujob-node2; do
  if [ -e "/run/netns/$NS" ]; then
    # Whatever a killed job left in the node (its slurmd is gone): nothing of it outlives the node.
    PIDS=$(ip netns pids "$NS" 2>/dev/null || true)
    [ -n "$PIDS" ] && kill -KILL $PIDS 2>/dev/null || true
    ip netns del "$NS" && echo "namespace $NS removed"
  fi
  rm -rf /etc/netns/"$NS"
done
rmdir /etc/netns 2>/dev/null || true  # only if ours were all it held
ip link del gpujob-v1 2>/dev/null || true; ip link del gpujob-v2 2>/dev/null || true  # (gone with the namespaces)

# munged --stop signals the daemon bound to the socket and waits for it to exit.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then munged --stop >/dev/null && echo "munged stopped"
else echo "munged is not running"; fi
