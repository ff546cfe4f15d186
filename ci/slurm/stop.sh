#!/usr/bin/env bash
# Stop the daemons ci/slurm/start.sh started, by their recorded PIDs only (never by name): jobs still queued or
# running are cancelled first so that their slurmstepd processes exit with them. Safe to call twice, or after a
# start that failed half way. Logs stay in $RANKAUDIT_SLURM_STATE/log for inspection.
set -uo pipefail
STATE="${RANKAUDIT_SLURM_STATE:-/tmp/rankaudit-slurm}"
PIDS="$STATE/pids"

pid_of() { [[ -f "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid"; }

controller=$(pid_of slurmctld)
if [[ -n "$controller" ]] && kill -0 "$controller" 2>/dev/null; then
  jobs=$(timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
  if [[ -n "${jobs// /}" ]]; then
    echo "slurm: cancelling jobs $jobs"
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 50); do [[ -z "$(timeout 5 squeue -h -t R,CG -o '%i' 2>/dev/null)" ]] && break; sleep 0.2; done
  fi
fi
for name in slurmd slurmctld munged; do
  pid=$(pid_of "$name") || continue
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; echo "slurm: killed $name ($pid)"; else echo "slurm: stopped $name ($pid)"; fi
  fi
  rm -f "$PIDS/$name.pid"
done
exit 0
