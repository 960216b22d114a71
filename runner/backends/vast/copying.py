"""Files between this machine and a vast.ai instance: the user's code (and, for a resume, the run
folder with its checkpoint) sent once the instance runs, then the mark that lets vast-start.sh
start the job; the run folder copied back at the end, or what a failed job wrote on the way out.

The folders are vast-start.sh's: the job in /workspace/job (the spec, the user's code in code/),
the runs in /workspace/runs, on the container's disk, which `vastai copy` reads.
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runner.backends.vast.following import VAST_LOG, Watch, phase_seen
from runner.errors import GpujobError, job_failed
from runner.runs.paths import COST, JOB, LOCK, RECORD, RunPaths
from runner.spec.model import JobSpec
from runner.usercode.shipping import CODE_DIR

REMOTE_JOB = "/workspace/job"  # vast-start.sh's job folder: the spec, and the user's code in code/
REMOTE_RUNS = "/workspace/runs"  # vast-start.sh's default: on the container's disk, which `vastai copy` reads
UPLOADED = ".gpujob-uploaded"  # vast-start.sh waits for it before a job that waits for an upload starts
# What each side keeps to itself: the instance's folder needs the record (it makes the folder a
# run), this side's record is the one that names the instance, and job/, the locks, the log and
# the cost are this side's bookkeeping.
UPLOAD_SKIPS = (LOCK, JOB, VAST_LOG, COST, UPLOADED)
COPY_BACK_SKIPS = (RECORD, *UPLOAD_SKIPS)


def remote_run(folder: Path) -> str:
    """The run folder's place on the instance."""
    return f"{REMOTE_RUNS}/{folder.name}"


def upload(api, instance_id: int, spec: JobSpec, folder: Path, watch: Watch, whole: bool, poll_s: float) -> None:
    """Wait for the instance, send it the user's code (job/code) and, for a resume (`whole`),
    the run folder with its checkpoint; then the mark that lets vast-start.sh begin (it waits
    for it, GPUJOB_WAIT_FOR_UPLOAD)."""
    deadline = api.clock() + spec.vast.startup_minutes * 60
    while (api.show_instance(instance_id) or {}).get("actual_status") != "running":
        if api.clock() > deadline:
            raise job_failed(f"vast: instance {instance_id} did not start within vast.startup_minutes "
                             f"({spec.vast.startup_minutes} min)")
        api.sleep(poll_s)
    watch.start()
    phase_seen(folder, watch)
    remote = remote_run(folder)
    if whole:
        api.copy_to(instance_id, folder, remote, exclude=UPLOAD_SKIPS)
    code = RunPaths(folder).job_code
    if code.is_dir():
        api.copy_to(instance_id, code, f"{REMOTE_JOB}/{CODE_DIR}")
    with _upload_mark() as mark:
        api.copy_to(instance_id, mark, f"{remote}/{UPLOADED}" if whole else f"{REMOTE_JOB}/{UPLOADED}")
    if whole:
        print(f"vast: sent the run folder to instance {instance_id}; the job continues from its checkpoint",
              file=sys.stderr)
    else:
        print(f"vast: sent your code to instance {instance_id}; the job starts", file=sys.stderr)


@contextmanager
def _upload_mark() -> Iterator[Path]:
    """An empty file to send as the upload's last step, removed once sent (or not)."""
    with tempfile.TemporaryDirectory(prefix="gpujob-upload-") as scratch:
        mark = Path(scratch) / UPLOADED
        mark.touch()
        yield mark


def copy_back(api, instance_id: int, folder: Path) -> None:
    """The run folder as the instance has it, over this one (this side's own files left alone)."""
    api.copy_back(instance_id, remote_run(folder), folder, exclude=COPY_BACK_SKIPS)


def salvage(api, instance_id: int, folder: Path) -> None:
    """On the way out after a failure: fetch what the job wrote (its error.log, checkpoints)."""
    print(f"vast: copying what the job wrote back to {folder} before destroying the instance "
          "(Ctrl-C skips this)", file=sys.stderr)
    try:
        copy_back(api, instance_id, folder)
    except GpujobError as err:  # reported, and the failure that brought us here is raised after
        print(f"gpujob: {err.message}", file=sys.stderr)
