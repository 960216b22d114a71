#!/usr/bin/env bash
# Make SLURM partition `multi` real: two compute nodes on this one machine, each a slurmd in its own
# network namespace (gpujob-node1, gpujob-node2) with its own hostname and address, under the one
# slurmctld that .ci/start-slurm.sh runs (called first). They share this machine's file system,
# which is their "shared file system", and munged's socket; only the network and hostname differ.
#
#   host (slurmctld, slurmd "vm") $NET.1 ==veth== $NET.11 gpujob-node1
#                                 $NET.1 ==veth== $NET.12 gpujob-node2 ==veth== gpujob-node1
#
# Point-to-point veth pairs, no bridge: bridged and routed traffic both pass iptables' FORWARD
# chain, which Docker sets to DROP, while these links need no forwarding and no firewall change.
# Each namespace gets its own /etc/hosts (.ci/on-node.sh binds /etc/netns/NAME/hosts), and
# .ci/stop-slurm.sh removes all of it. Nothing else on the machine changes. Idempotent; bounded waits.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
HERE=$(cd "$(dirname "$0")" && pwd)
NET=${GPUJOB_NODES_NET:-10.213.77}   # the same default as start-slurm.sh's slurm.conf
NODES=(gpujob-node1 gpujob-node2)
LOG=/var/log/slurm

if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 util-linux >/dev/null
fi
bash "$HERE/start-slurm.sh"

# --- the network: slurm.conf's NodeAddr on each node, one /32 address per end ---
# link A:IF B:IF: a veth pair between namespaces A and B ("-": this machine's own), made once.
in_ns() { if [ "$1" = - ]; then shift; "$@"; else local ns=$1; shift; ip netns exec "$ns" "$@"; fi; }
link() {
  local a=${1%%:*} ia=${1#*:} b=${2%%:*} ib=${2#*:}
  in_ns "$a" ip link show "$ia" >/dev/null 2>&1 && in_ns "$b" ip link show "$ib" >/dev/null 2>&1 && return
  for stale in "$a $ia" "$b $ib" "- gpujob-tmp-a"; do set -- $stale; in_ns "$1" ip link del "$2" 2>/dev/null || true; done
  ip link add gpujob-tmp-a type veth peer name gpujob-tmp-b
  for end in "a $a $ia" "b $b $ib"; do
    set -- $end
    [ "$2" = - ] || ip link set "gpujob-tmp-$1" netns "$2"
    in_ns "$2" ip link set "gpujob-tmp-$1" name "$3"
  done
}
# addr NS IF MINE PEER: MINE/32 on IF, and PEER reached over it.
addr() {
  in_ns "$1" ip addr replace "$NET.$3/32" dev "$2"
  in_ns "$1" ip link set "$2" up
  in_ns "$1" ip route replace "$NET.$4/32" dev "$2" src "$NET.$3"
}
for NS in "${NODES[@]}"; do
  [ -e "/run/netns/$NS" ] || ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
done
link -:gpujob-v1 gpujob-node1:eth0 && addr - gpujob-v1 1 11 && addr gpujob-node1 eth0 11 1
link -:gpujob-v2 gpujob-node2:eth0 && addr - gpujob-v2 1 12 && addr gpujob-node2 eth0 12 1
link gpujob-node1:eth1 gpujob-node2:eth1 && addr gpujob-node1 eth1 11 12 && addr gpujob-node2 eth1 12 11
for NS in "${NODES[@]}"; do
  # Inside, the controller's name is this machine's end of the link (outside it is 127.0.0.1),
  # and every node's name its address: what slurmd, MASTER_ADDR and gloo resolve. Also as
  # IPv4-mapped IPv6 addresses, which torch's store looks up (no DNS answers in here).
  install -d /etc/netns/"$NS"
  { echo "127.0.0.1 localhost"
    for ENTRY in "1 $(hostname -s) $(hostname)" "11 ${NODES[0]}" "12 ${NODES[1]}"; do
      set -- $ENTRY; N=$1; shift
      echo "$NET.$N $*"; echo "::ffff:$NET.$N $*"
    done; } >/etc/netns/"$NS"/hosts
done

# --- the daemons: `slurmd -N NAME` on each node (.ci/on-node.sh: its network, hostname, hosts) ---
alive() { local p s; p=$(cat "$1" 2>/dev/null) && s=$(ps -o stat= -p "$p") && [ "${s:0:1}" != Z ]; }
for NS in "${NODES[@]}"; do
  alive "/run/slurm/slurmd-$NS.pid" && continue
  install -d -m 755 /var/spool/slurmd/"$NS"
  # slurmd forks into the background itself, keeping the namespaces it was started in.
  # Their own slurm.conf: task/none (start-slurm.sh says why).
  "$HERE/on-node.sh" "$NS" slurmd -f /etc/slurm/slurm-nodes.conf -N "$NS"
done

state() { timeout 5 sinfo -h -N -p multi -o '%N %t' 2>/dev/null | sort -u || true; }
ready() { [ "$(state | awk '$2 ~ /^(idle|mix|alloc)$/' | wc -l)" = 2 ]; }
SECONDS=0
while [ $SECONDS -lt 60 ] && ! ready; do
  for NS in "${NODES[@]}"; do
    case "$(state | awk -v n="$NS" '$1 == n {print $2}')" in
      down*|drain*|drng*) scontrol update nodename="$NS" state=resume 2>/dev/null || true;;
    esac
  done
  sleep 1
done
if ! ready; then
  echo "partition multi is not up after 60 s:" >&2; state >&2; sinfo -R >&2 || true
  for NS in "${NODES[@]}"; do tail -n 15 "$LOG/slurmd-$NS.log" >&2 || true; done
  exit 1
fi
echo "slurm nodes up in $SECONDS s: $(state | tr '\n' ' ')"

# Smoke test, bounded: node 1 reaches node 2 directly, and one step spans both nodes.
"$HERE/on-node.sh" "${NODES[0]}" timeout 5 bash -c "echo >/dev/tcp/${NODES[1]}/6818" \
  || { echo "${NODES[0]} cannot reach ${NODES[1]} ($NET.12)" >&2; exit 1; }
SEEN=$(timeout 30 srun -p multi -N2 --ntasks-per-node=1 hostname | sort | tr '\n' ' ')
[ "$SEEN" = "${NODES[*]} " ] || { echo "srun -p multi -N2 hostname said '$SEEN'" >&2; exit 1; }
echo "slurm nodes smoke test ok (srun -N2 ran on: $SEEN)"
