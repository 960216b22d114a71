"""Following a vast.ai instance to its job's end: its status words, the job's output as `vastai
logs` gives it (a window of the last lines, read again at each poll), and the marks vast-start.sh
prints around each attempt (`gpujob-vast: start NAME`, `gpujob-vast: exit CODE`), which are how
this side learns the job's outcome.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.backends.vast.offers import RUN_GRACE_MINUTES
from runner.errors import PREEMPTED, job_failed, last_error_line
from runner.runs import record as run_record
from runner.spec.model import JobSpec

START_MARK, EXIT_MARK = "gpujob-vast: start ", "gpujob-vast: exit "
RUN_GRACE_S = RUN_GRACE_MINUTES * 60  # past resources.timeout_minutes: data download, the final checkpoint
EXITED_GRACE_S = 90  # an exited container may take this long for its last log lines to show
LOG_WINDOW = 2000  # log lines kept for diffing and for error messages
NOT_STARTED = (None, "loading", "created", "scheduling")  # actual_status before the container ever ran
STOPPED = ("exited", "stopped", "offline", "unknown", "inactive")  # the container is not running
VAST_LOG = "vast.log"  # the instance's output, kept in the run folder


@dataclass
class Watch:
    """What following an instance has seen so far."""

    lines: list[str] = field(default_factory=list)
    status: str | None = None
    started: bool = False  # the container ran: from then on there may be a run folder to copy
    started_t: float | None = None  # when that was first seen, in epoch seconds (a start-up phase)

    def start(self) -> None:
        self.started, self.started_t = True, time.time()


def new_lines(seen: list[str], current: list[str]) -> list[str]:
    """The lines of a log tail not shown yet: `current` is a later window of the same log."""
    for start in range(len(seen)):
        overlap = len(seen) - start
        if seen[start:] == current[:overlap]:
            return current[overlap:]
    return current


def own_lines(lines: list[str], name: str) -> list[str]:
    """The part of an instance's output that is run NAME's: a sweep's instance runs several runs in
    turn, each from its `start` mark to the next run's. Lines before the first mark in the window
    are the first run's there (the upload's wait); a window that names only others holds none."""
    owners = [line[len(START_MARK):].strip() for line in lines if line.startswith(START_MARK)]
    owner, own = (owners[0] if owners else name), []
    for line in lines:
        if line.startswith(START_MARK):
            owner = line[len(START_MARK):].strip()
        if owner == name:
            own.append(line)
    return own


def exit_code(lines: list[str]) -> int | None:
    """The code of the last finished attempt, None while one is running (or none started)."""
    for line in reversed(lines):
        if line.startswith(EXIT_MARK):
            return int(line[len(EXIT_MARK):].strip() or 1)
        if line.startswith(START_MARK):
            return None
    return None


def follow(api, instance_id: int, spec: JobSpec, watch: Watch, poll_s: float) -> int:
    """Print the instance's state and the job's output until the job ends; its exit code."""
    startup_deadline = api.clock() + spec.vast.startup_minutes * 60
    run_deadline = stopped_since = None
    while True:
        info = api.show_instance(instance_id)
        status = _say_status(instance_id, info, watch)
        if status not in NOT_STARTED and not watch.started:
            # Running, or already past it: a job that ends between two polls goes from loading
            # straight to exited, and is still followed to its exit line and copied back.
            watch.start()
        if watch.started and run_deadline is None:  # from here (or the upload that saw it run) on
            run_deadline = api.clock() + spec.resources.timeout_minutes * 60 + RUN_GRACE_S
        if watch.started:
            _show_new_output(api, instance_id, watch)
        code = exit_code(watch.lines)
        if code is not None and not (code == PREEMPTED and spec.vast.interruptible):
            return code
        now = api.clock()
        if not watch.started and now > startup_deadline:
            raise job_failed(f"vast: instance {instance_id} did not start within vast.startup_minutes "
                             f"({spec.vast.startup_minutes} min); last status: {status} "
                             f"{info.get('status_msg') or ''}".rstrip())
        if run_deadline is not None and now > run_deadline:
            raise job_failed(f"vast: the job ran past resources.timeout_minutes ({spec.resources.timeout_minutes} min)")
        stopped = watch.started and status in STOPPED and (code is None or code == PREEMPTED)
        stopped_since = _stopped_since(instance_id, spec, watch, status, stopped_since, now) if stopped else None
        api.sleep(poll_s)


def _say_status(instance_id: int, info: dict, watch: Watch) -> str | None:
    """The instance's status, said when it changes."""
    status = info.get("actual_status")
    if status != watch.status:
        message = f" ({info['status_msg']})" if info.get("status_msg") else ""
        print(f"vast: instance {instance_id} is {status or 'being set up'}{message}", file=sys.stderr)
        watch.status = status
    return status


def _show_new_output(api, instance_id: int, watch: Watch) -> None:
    fresh = new_lines(watch.lines, api.logs(instance_id).splitlines())
    for line in fresh:
        print(line)
    watch.lines = (watch.lines + fresh)[-LOG_WINDOW:]


def _stopped_since(instance_id: int, spec: JobSpec, watch: Watch, status: str | None, since: float | None,
                   now: float) -> float:
    """Since when the container has been stopped without finishing; a failure once that has
    lasted EXITED_GRACE_S, unless vast.ai paused an interruptible instance."""
    if spec.vast.interruptible:
        # Outbid: vast.ai pauses an interruptible instance (it may not even see SIGTERM) and runs
        # it again when the bid wins; the start script then resumes from the checkpoint on its
        # disk. Wait for that, within the time limit.
        if since is None:
            print(f"vast: instance {instance_id} is {status} (outbid?); waiting for it to run again, "
                  f"until the time limit", file=sys.stderr)
        return since or now
    since = since or now
    if now - since > EXITED_GRACE_S:
        raise job_failed(f"vast: instance {instance_id} is {status} and the job did not finish: "
                         f"{last_error_line(watch.lines) or 'no output'}")
    return since


def phase_seen(folder: Path, watch: Watch) -> None:
    """The instance's start (rental, image pull, container start), once seen, as a start-up
    phase: recorded once."""
    if watch.started_t is not None:
        run_record.phase_ended(folder, "instance running", "rented, image pulled, container started",
                               t=watch.started_t)
        watch.started_t = None


def keep_log(folder: Path, watch: Watch) -> None:
    """The instance's output goes into the run folder as vast.log (after what earlier attempts
    left there: a resumed run's log goes on)."""
    if watch.lines and folder.is_dir():
        with open(folder / VAST_LOG, "a") as kept:
            kept.write("\n".join(watch.lines) + "\n")


def kept_log(folder: Path) -> list[str]:
    path = folder / VAST_LOG
    return path.read_text(errors="replace").splitlines() if path.exists() else []
