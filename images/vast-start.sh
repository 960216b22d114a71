#!/bin/bash
# vast.ai on-start: runs one gpujob job on a rented instance (a sweep's instance: several in turn). The image installs it as
# `gpujob-vast-start`; gpujob's vast backend makes it the container's main process (vast.ai's
# "args" launch mode), and it works the same as the on-start command of the ssh/jupyter modes.
#
# The job comes in the environment: GPUJOB_SPEC_B64 (the resolved spec, base64) and
# GPUJOB_RUN_NAME (the run folder's name, picked on the user's machine). It always runs with
# --resume, so an instance that is stopped and started again (an interruptible one that was
# outbid, a host reboot) continues from its last checkpoint. The backend follows `vastai logs`
# and reads the last `gpujob-vast: exit CODE` line, then copies $RUNS/$GPUJOB_RUN_NAME back.
set -u
: "${GPUJOB_SPEC_B64:?is set by gpujob's vast backend}" "${GPUJOB_RUN_NAME:?is set by gpujob's vast backend}"
# Not the image's /runs volume: vast.ai copies files out of the container's own disk.
RUNS=${GPUJOB_RUNS_DIR:-/workspace/runs}
JOB=${GPUJOB_JOB_DIR:-/workspace/job}
cd /workspace 2>/dev/null || cd "$HOME"   # a spec's relative data.root (./data) means /data
mkdir -p "$RUNS" "$JOB" "$JOB/queue"
printf '%s' "$GPUJOB_SPEC_B64" | base64 -d >"$JOB/spec.yaml" || { echo "gpujob-vast: exit 2"; exit 2; }

# A resumed run (`gpujob resume`) sends its folder, checkpoint included, once the instance
# runs, and a job with the user's own code sends that code to $JOB/code; the job starts when
# the last piece, the mark, has arrived (in the run folder for a resume, in $JOB otherwise).
if [ "${GPUJOB_WAIT_FOR_UPLOAD:-0}" = 1 ]; then
  echo "gpujob-vast: waiting for the run folder or the job's code to be sent"
  waited=0
  until [ -e "$RUNS/$GPUJOB_RUN_NAME/.gpujob-uploaded" ] || [ -e "$JOB/.gpujob-uploaded" ]; do
    sleep 2; waited=$((waited + 2))
    [ "$waited" -lt "${GPUJOB_UPLOAD_WAIT_S:-1800}" ] || { echo "gpujob: the run folder never arrived"; echo "gpujob-vast: exit 3"; exit 3; }
  done
fi

stopping=0
child=""
# As PID 1, bash ignores SIGTERM unless it is trapped: pass it on, so the job checkpoints
# before vast.ai stops the container (and a sweep's instance takes no further job).
trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT

# run_job NAME SPEC [CODE [ENV]]: one job, between the marks the backend follows; a queued one's
# meter (ENV: its price, billing start, budget) replaces the first job's, which the container has.
run_job() {
  echo "gpujob-vast: start $1"
  (
    unset GPUJOB_SHIPPED_CODE
    if [ -n "${4:-}" ]; then
      unset GPUJOB_USD_PER_HOUR GPUJOB_BILLED_SINCE GPUJOB_MAX_USD
      set -a; [ -f "$4" ] && . "$4"; set +a
    fi
    # The user's code as submitted, imported before anything else of that name.
    [ -n "${3:-}" ] && [ -d "$3" ] && export GPUJOB_SHIPPED_CODE="$3"
    exec gpujob run "$2" --run-dir "$RUNS/$1" --nproc-per-node auto --resume
  ) &
  child=$!
  watcher=""
  if [ "${GPUJOB_VAST_POOL:-0}" = 1 ]; then
    # A sweep's trial stopped on its own (its pruner): the backend sends queue/NAME/.gpujob-stop;
    # the job checkpoints and ends, and the instance goes on to the next trial.
    ( while kill -0 "$child" 2>/dev/null; do
        [ -e "$JOB/queue/$1/.gpujob-stop" ] && { kill -TERM "$child" 2>/dev/null; break; }
        sleep 1
      done ) &
    watcher=$!
  fi
  wait "$child"; code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done   # wait returns early on a trapped signal
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
  child=""
  echo "gpujob-vast: exit $code"
}

run_job "$GPUJOB_RUN_NAME" "$JOB/spec.yaml" "$JOB/code"
[ "${GPUJOB_VAST_POOL:-0}" = 1 ] || exit "$code"

# A sweep's instance (GPUJOB_VAST_POOL=1) runs its trials in turn: the backend sends each next
# one to $JOB/queue/NAME (spec.yaml, env.sh with its meter's variables, code/) and then its mark,
# once the previous one's folder is copied back. The backend destroys the instance when no
# trial is left; a stop (SIGTERM) ends it after the job it runs. Left idle for
# GPUJOB_POOL_IDLE_S (its sweep's driver killed), the container ends: the GPU bills no more.
idle=0
while [ "$stopping" = 0 ]; do
  next=""
  for mark in "$JOB"/queue/*/.gpujob-uploaded; do
    [ -e "$mark" ] && [ ! -e "${mark%/*}/.gpujob-taken" ] && { next=${mark%/*}; break; }
  done
  if [ -z "$next" ]; then
    sleep 1; idle=$((idle + 1))
    [ "$idle" -lt "${GPUJOB_POOL_IDLE_S:-900}" ] || { echo "gpujob-vast: idle, no trial came"; break; }
    continue
  fi
  idle=0
  touch "$next/.gpujob-taken"
  run_job "${next##*/}" "$next/spec.yaml" "$next/code" "$next/env.sh"
done
exit "$code"
