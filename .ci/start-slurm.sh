#!/usr/bin/env bash
# Make a real one-node SLURM cluster (munged + slurmctld + slurmd, all local) available here and
# in CI. Idempotent: installs Debian's packages if missing, (re)writes slurm.conf, starts only the
# daemons that are not running, waits (bounded) until the node is idle, then smoke-tests it.
# slurm.conf also names the two namespaced nodes of partition `multi`; .ci/start-slurm-nodes.sh
# starts them.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CONF=/etc/slurm/slurm.conf
NODES_CONF=/etc/slurm/slurm-nodes.conf  # the namespaced nodes' (start-slurm-nodes.sh)
LOG=/var/log/slurm
HERE=$(cd "$(dirname "$0")" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  # slurm-wlm pulls slurmctld, slurmd and slurm-client; munge's postinst also creates a key.
  # Their postinsts try to start services; without an init system that is refused, harmlessly.
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge: every slurm RPC is signed with it, so it must answer before anything else. ---
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
# /run is a tmpfs on fresh machines; systemd would make this RuntimeDirectory for us.
install -d -o munge -g munge -m 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  # munged refuses to run as root; it forks itself. A stale socket is cleared via its lockfile.
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 10); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || { echo "munged did not come up" >&2; tail -n 20 /var/log/munge/munged.log >&2; exit 1; }
fi

# --- slurm.conf: the node line comes from `slurmd -C` so CPUs/topology/memory match the host
# exactly (a mismatch drains the node as "Low RealMemory"/"Low CPUs"). ---
NODE=$(slurmd -C | grep '^NodeName=')
NAME=${NODE%% *}; NAME=${NAME#NodeName=}
# The namespaced nodes' names and subnet (.ci/start-slurm-nodes.sh uses the same).
NODES_PREFIX=gpujob-node NODES_NET=${GPUJOB_NODES_NET:-10.213.77}
install -d -m 755 "$LOG" /var/spool/slurmctld /var/spool/slurmd/"$NAME" /run/slurm
NEW=$(cat <<EOF
# Written by .ci/start-slurm.sh: a one-node test cluster, daemons run as root, no systemd.
ClusterName=gpujob
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# No cgroup plugins anywhere: without systemd nothing delegates a cgroup tree to slurmd (and CI
# containers may have none); with linuxproc + task/affinity + jobacct none no cgroup.conf is needed.
ProctrackType=proctrack/linuxproc
# task/affinity confines each task to its CPUs (sched_setaffinity) and binds them as srun's
# --cpu-bind says, as clusters do. The namespaced nodes run task/none ($NODES_CONF): they share
# this machine's CPUs, and each would confine its tasks to the same CPU 0.
TaskPlugin=task/affinity
# The two configurations differ on purpose (TaskPlugin): no warning about it.
DebugFlags=NO_CONF_HASH
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# CR_Core, not CR_Core_Memory: memory is not consumable, so jobs need no --mem.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Reject at submit what this partition can never run (e.g. more tasks than CPUs) instead of
# leaving it pending forever with Reason=PartitionConfig.
EnforcePartLimits=ALL
# Let a node that was DOWN (e.g. slurmd restarted) come back by itself once it registers.
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
# %n: the node's name. Three slurmds share this machine (start-slurm-nodes.sh starts two more),
# each with its own spool, pid file and log.
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
# No mail(1) here; avoids log noise.
MailProg=/bin/true
$NODE State=UNKNOWN
PartitionName=debug Nodes=$NAME Default=YES MaxTime=INFINITE State=UP
# Two more nodes, each a slurmd in its own network namespace with its own hostname and address
# (.ci/start-slurm-nodes.sh): the multi-node tests' cluster. Same hardware line as this machine:
# they share its CPUs. Until that script runs they are simply not responding.
NodeName=${NODES_PREFIX}[1-2] NodeAddr=${NODES_NET}.11,${NODES_NET}.12 ${NODE#NodeName=$NAME } State=UNKNOWN
PartitionName=multi Nodes=${NODES_PREFIX}[1-2] MaxTime=INFINITE State=UP
EOF
)
NODES_NEW=${NEW/TaskPlugin=task\/affinity/TaskPlugin=task\/none}
CHANGED=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$NEW" ]; then
  printf '%s\n' "$NEW" >"$CONF"; CHANGED=1
fi
if [ "$(cat "$NODES_CONF" 2>/dev/null)" != "$NODES_NEW" ]; then
  printf '%s\n' "$NODES_NEW" >"$NODES_CONF"; CHANGED=1
fi

# A pid file names a live daemon: not a zombie (PID 1 here reaps orphans only now and then).
alive() { local p s; p=$(cat "$1" 2>/dev/null) && s=$(ps -o stat= -p "$p") && [ "${s:0:1}" != Z ]; }
fail() {
  echo "$1" >&2; sinfo -R >&2 || true
  tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd-$NAME.log" >&2; exit 1
}
state() { timeout 5 sinfo -h -N -n "$NAME" -o %t 2>/dev/null | head -1 || true; }

# Fast path: same config, both daemons alive, node schedulable.
if [ $CHANGED = 0 ] && alive /run/slurm/slurmctld.pid && alive "/run/slurm/slurmd-$NAME.pid"; then
  case "$(state)" in idle|mix|alloc) echo "slurm already up: node $NAME $(state)"; exit 0;; esac
fi
# A changed node/partition line needs a daemon restart, not just `scontrol reconfigure`.
[ $CHANGED = 1 ] && KEEP_MUNGE=1 "$HERE/stop-slurm.sh" >/dev/null

# Both daemons fork into the background themselves and log to $LOG (set in slurm.conf).
# slurmctld -c: start with no saved jobs/node state. After an unclean stop the saved state can
# hold finished jobs as still running (the node then stays "alloc" forever); job ids restart at 1.
alive /run/slurm/slurmctld.pid || slurmctld -c
alive "/run/slurm/slurmd-$NAME.pid" || slurmd
# Deadline by the clock, not a loop count: a failing sinfo can itself take seconds to give up.
SECONDS=0
while [ $SECONDS -lt 60 ]; do
  S=$(state)
  case "$S" in
    idle|mix|alloc) break;;
    # DOWN/DRAIN (e.g. slurmd was restarted under a running controller): it is fine, put it back.
    down|drain|drng) scontrol update nodename="$NAME" state=resume 2>/dev/null || true;;
  esac
  sleep 1
done
case "$(state)" in idle|mix|alloc) ;; *) fail "slurm node $NAME is '$(state)', not idle, after 60 s";; esac
echo "slurm up in $SECONDS s: $(sinfo -V), node $NAME idle"

# Smoke test, bounded: a 2-task step and a batch job must both run to completion. (The first
# batch job after a cold start can take ~10 s: it waits for a scheduler pass and sbatch --wait polls
# at 2 s, then 8 s.)
[ "$(timeout 30 srun -N1 -n2 hostname | wc -l)" = 2 ] || fail "srun -n2 smoke test failed"
OUT=$(mktemp); trap 'rm -f "$OUT"' EXIT
{ timeout 30 sbatch -Q --wait -o "$OUT" --wrap 'echo ok' && grep -qx ok "$OUT"; } \
  || fail "sbatch smoke test failed"
echo "slurm smoke test ok (srun -n2, sbatch --wait)"
