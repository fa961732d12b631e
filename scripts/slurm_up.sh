#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian/Ubuntu, run as root): for developers and for CI.
#
#   bash scripts/slurm_up.sh          # install slurmctld slurmd slurm-client munge if missing, configure, start, wait
#   bash scripts/slurm_up.sh --down   # stop the daemons this script started
#
# The node is this host with all its CPUs (proctrack/linuxproc, task/none, select/cons_tres: no cgroups needed), one
# partition `debug`, requeue allowed, and a short credential lifetime so a requeued job restarts within seconds.
# Exits non-zero with the reason (and the daemons' log tails) when the cluster does not come up.
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurm
NODE=$(hostname -s)
CPUS=${SLURM_UP_CPUS:-$(nproc)}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

die() {
  echo "slurm_up: FAILED: $*" >&2
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "---- tail $f" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}

stop_pidfile() {
  local pidfile=$1
  if [ -f "$pidfile" ]; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  fi
}

if [ "${1:-}" = "--down" ]; then
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  stop_pidfile /run/munge/munged.pid
  echo "slurm_up: stopped"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts system daemons)"

# ---------------------------------------------------------------------------------------------------- packages
missing=()
for cmd in slurmctld slurmd sinfo munged; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "slurm_up: installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
  command -v apt-get >/dev/null || die "apt-get not found: install slurmctld slurmd slurm-client munge by hand"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install failed"
fi

# ----------------------------------------------------------------------------------------------------- munge
mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  stop_pidfile /run/munge/munged.pid
  runuser -u munge -- munged || die "munged did not start"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munge credentials do not round-trip (munge -n | unmunge)"
fi

# ------------------------------------------------------------------------------------------------ slurm.conf
mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/d"
cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by segcentroids scripts/slurm_up.sh: a one-node cluster on $NODE.
ClusterName=segcentroids
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again once its credential expired (default 120 s)
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------------------------------------------- daemons
stop_pidfile /run/slurmd.pid
stop_pidfile /run/slurmctld.pid
slurmctld -c || die "slurmctld did not start (see its log)"   # -c: clean start, no saved jobs
slurmd || die "slurmd did not start (see its log)"

deadline=$(( $(date +%s) + TIMEOUT ))
state=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle) break ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
[ "$state" = "idle" ] || die "node $NODE is not idle after ${TIMEOUT}s (sinfo state: '${state:-none}')"
sinfo
echo "slurm_up: cluster up: node $NODE, $CPUS CPUs, partition debug"
