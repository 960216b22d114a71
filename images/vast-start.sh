#!/bin/bash
# vast.ai on-start: runs one gpujob job on a rented instance. The image installs it as
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
mkdir -p "$RUNS" "$JOB"
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

# The user's code as submitted, imported before anything else of that name.
[ -d "$JOB/code" ] && export GPUJOB_SHIPPED_CODE="$JOB/code"
echo "gpujob-vast: start $GPUJOB_RUN_NAME"
gpujob run "$JOB/spec.yaml" --run-dir "$RUNS/$GPUJOB_RUN_NAME" --nproc-per-node auto --resume &
child=$!
# As PID 1, bash ignores SIGTERM unless it is trapped: pass it on, so the job checkpoints
# before vast.ai stops the container.
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"; code=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done   # wait returns early on a trapped signal
echo "gpujob-vast: exit $code"
exit "$code"
