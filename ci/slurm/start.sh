#!/usr/bin/env bash
# Start a private single-node SLURM cluster (munge, slurmctld, slurmd) without systemd or cgroups, for CI and for
# trying the SLURM profile on one machine. Every daemon runs in the foreground (-D), backgrounded by this script,
# so that its PID is ours: ci/slurm/stop.sh stops exactly those PIDs.
#
# Usage:  bash ci/slurm/start.sh && source "$RANKAUDIT_SLURM_STATE/env"
# Env:    RANKAUDIT_SLURM_STATE      state, logs, config and PID files (default /tmp/rankaudit-slurm)
#         RANKAUDIT_SLURM_FAKE_GPUS  GPU GRES count backed by fake devices, so --gpus jobs schedule (default 4)
#         RANKAUDIT_SLURM_CPUS       CPUs the node advertises (default: max(nproc, 4); more than the real cores
#                                    is allowed through SlurmdParameters=config_overrides: CI jobs are tiny)
#         RANKAUDIT_SLURM_MEM_MB     memory the node advertises (default: 80 % of RAM)
#
# The config is written to /etc/slurm (slurm.conf, gres.conf): a private SLURM_CONF does not work, because the
# Snakemake SLURM plugin deletes every SLURM_* variable inside a job before it calls srun, which then finds no
# config. A slurm.conf this script did not write is never overwritten. The `env` file in the state directory
# exports RANKAUDIT_SLURM_STATE for the tests (they read the job completion log there).
# Partitions `cpu` (default) and `gpu` match profiles/slurm/partitions.yaml, so the profile's partition choice is
# exercised for real. Accounting is off (no slurmdbd): job status comes from squeue (MinJobAge keeps finished jobs
# visible for 10 minutes) and every finished job is appended to $RANKAUDIT_SLURM_STATE/log/jobcomp.log.
set -euo pipefail
STATE="${RANKAUDIT_SLURM_STATE:-/tmp/rankaudit-slurm}"
FAKE_GPUS="${RANKAUDIT_SLURM_FAKE_GPUS:-4}"
CPUS="${RANKAUDIT_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}"
MEM_MB="${RANKAUDIT_SLURM_MEM_MB:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))}"
HOST="$(hostname -s)"
CONF_DIR=/etc/slurm
MARKER="# Written by ci/slurm/start.sh"
PIDS="$STATE/pids"

fail() { echo "ci/slurm/start.sh: $*" >&2; exit 1; }
alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds
  local tries=$(( $1 * 5 )); shift
  for ((i = 0; i < tries; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

[[ $EUID -eq 0 ]] || fail "needs root (slurmd runs jobs as their submitting user)"
command -v slurmctld >/dev/null || fail "slurmctld not found: run 'bash ci/slurm/install.sh' first"
if alive slurmctld; then
  echo "slurm: already running from $STATE (slurmctld PID $(cat "$PIDS/slurmctld.pid"))"
  exit 0
fi
CONF="$CONF_DIR/slurm.conf"
if [[ -s "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
  fail "$CONF exists and was not written by this script: refusing to replace a real cluster's configuration"
fi
mkdir -p "$CONF_DIR" "$PIDS" "$STATE"/{slurmctld,slurmd,log}
printf 'export RANKAUDIT_SLURM_STATE=%q\n' "$STATE" > "$STATE/env"
started=$(date +%s.%N)

# --- munge: reuse a munged that already answers (not ours to stop), else start one as user munge -------------------
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  echo "slurm: using the munged already running"
else
  install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  fi
  # setpriv execs munged, so $! is munged itself
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground > "$STATE/log/munged.out" 2>&1 &
  echo $! > "$PIDS/munged.pid"
  wait_for 10 bash -c 'munge -n </dev/null | unmunge' || fail "munged did not answer; see $STATE/log/munged.out"
fi

# --- configuration ----------------------------------------------------------------------------------------------
gres=""
rm -f "$CONF_DIR/gres.conf"
if (( FAKE_GPUS > 0 )); then
  # a GPU GRES needs character devices (a regular file is refused, Count= alone drains the node):
  # clones of /dev/null are enough for scheduling, since nothing binds devices without cgroups
  for ((g = 0; g < FAKE_GPUS; g++)); do
    [[ -c "$STATE/fakegpu$g" ]] || { rm -f "$STATE/fakegpu$g"; mknod "$STATE/fakegpu$g" c 1 3; }
  done
  gres=" Gres=gpu:$FAKE_GPUS"
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/fakegpu[0-%d]\n' "$HOST" "$STATE" "$((FAKE_GPUS - 1))" \
    > "$CONF_DIR/gres.conf"
fi
# memory limits: with a writable cgroup v1 memory controller, task/cgroup confines each job to its --mem and the
# kernel's OOM killer ends a job above it (state OUT_OF_MEMORY, as on a production cluster); without one,
# slurmstepd samples every step's RSS each second and kills a step above its job's --mem (state FAILED, "Exceeded
# job memory limit" in the job's log). Either way tests/slurm sees a real out-of-memory kill.
# RANKAUDIT_SLURM_CGROUP=off forces the second.
rm -f "$CONF_DIR/cgroup.conf"
if [[ "${RANKAUDIT_SLURM_CGROUP:-auto}" != off && -w /sys/fs/cgroup/memory && -d /sys/fs/cgroup/freezer ]]; then
  MEMORY_LIMITS="cgroup"
  printf '%s\nCgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nConstrainRAMSpace=yes\nConstrainSwapSpace=yes\n' \
    "$MARKER" > "$CONF_DIR/cgroup.conf"
  limits_conf=$'ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup\nJobAcctGatherType=jobacct_gather/cgroup'
else
  MEMORY_LIMITS="rss-polling"
  limits_conf=$'ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/linux\nJobAcctGatherParams=OverMemoryKill'
fi
cat > "$CONF" <<CONF
$MARKER for state $STATE: a one-node CI cluster (memory limits: $MEMORY_LIMITS; no accounting database).
ClusterName=rankaudit-ci
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$limits_conf
JobAcctGatherFrequency=task=1
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MessageTimeout=30
MailProg=/bin/true
# finished jobs stay visible to squeue for 10 min: the Snakemake plugin's squeue status mode needs
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
$( (( FAKE_GPUS > 0 )) && echo "GresTypes=gpu" )
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB$gres State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF

# --- slurmctld, then slurmd ----------------------------------------------------------------------------------------
/usr/sbin/slurmctld -D -c -i > "$STATE/log/slurmctld.out" 2>&1 &
echo $! > "$PIDS/slurmctld.pid"
wait_for 20 bash -c 'scontrol ping | grep -q "is UP"' \
  || fail "slurmctld did not come up; see $STATE/log/slurmctld.log"
/usr/sbin/slurmd -D > "$STATE/log/slurmd.out" 2>&1 &
echo $! > "$PIDS/slurmd.pid"
node_ready() { [[ "$(sinfo -h -N -n "$HOST" -o '%t' | head -n 1)" =~ ^(idle|mix|alloc)$ ]]; }
if ! wait_for 30 node_ready; then
  sinfo -N -l || true
  tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  fail "node $HOST is not idle (state: $(sinfo -h -N -o '%t' | head -n 1))"
fi
sinfo
echo "slurm: up in $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $started}") s: node $HOST, $CPUS CPUs, $MEM_MB MB," \
  "$FAKE_GPUS fake GPUs, memory limits by $MEMORY_LIMITS, state $STATE; now run: source $STATE/env"
