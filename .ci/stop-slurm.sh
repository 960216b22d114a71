#!/usr/bin/env bash
# Stop the slurmd, slurmctld and munged that start-slurm.sh started (local development; CI
# machines are discarded). KEEP_MUNGE=1 leaves munged up (start-slurm.sh uses it to restart slurm
# after a config change). Running jobs die with slurmd; slurmctld keeps its state in
# /var/spool/slurmctld for the next start.
set -euo pipefail
# Live and not a zombie: PID 1 here reaps orphans only now and then, and kill -0 succeeds on zombies.
alive() { local s; s=$(ps -o stat= -p "$1") && [ "${s:0:1}" != Z ]; }
for d in slurmd slurmctld; do
  PIDF=/run/slurm/$d.pid; PID=$(cat "$PIDF" 2>/dev/null || true)
  if [ -z "$PID" ] || ! alive "$PID"; then echo "$d is not running"; continue; fi
  kill -TERM "$PID"
  for _ in $(seq 30); do alive "$PID" || break; sleep 0.5; done
  if alive "$PID"; then echo "$d ignored SIGTERM for 15 s; killing it" >&2; kill -KILL "$PID"; fi
  rm -f "$PIDF"; echo "$d stopped"
done
[ "${KEEP_MUNGE:-0}" = 1 ] && exit 0
# munged --stop signals the daemon bound to the socket and waits for it to exit.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then munged --stop >/dev/null && echo "munged stopped"
else echo "munged is not running"; fi
