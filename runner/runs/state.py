"""Where a run stands, in one vocabulary for every backend: pending, running, finished, failed,
cancelled or preempted, with a line of detail. A backend says whether its job is live; once it
has ended, the run folder and the job's exit code say the rest, the same way for all of them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.errors import BUDGET_REACHED, INTERRUPTED, PREEMPTED as PREEMPTED_CODE, bad_input
from runner.invocation import command
from runner.runs import lock as run_lock
from runner.runs import record as run_record
from runner.runs.lines import error_line, summary_line
from runner.runs.paths import RunPaths
from runner.runs.reading import whole_summary

PENDING, RUNNING, FINISHED, FAILED, CANCELLED, PREEMPTED = (
    "pending", "running", "finished", "failed", "cancelled", "preempted")
OVER_BUDGET = "over budget"  # stopped with a checkpoint at resources.max_usd: a resume that raises it continues
LIVE = (PENDING, RUNNING)


@dataclass
class RunState:
    state: str
    detail: str = ""  # one line: where it runs, why it ended
    exit_code: int | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def describe(self) -> str:
        return f"{self.state}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Run:
    """A run folder and its submission record: what every lifecycle command hands a backend."""

    folder: Path
    record: "run_record.Submission"

    @property
    def handles(self) -> dict:
        return self.record.handles

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.folder)


def resume_hint(folder: Path) -> str:
    kept = RunPaths(folder).newest_checkpoint()
    if kept is None:
        return f"no checkpoint was written; `{command('gpujob resume')}` would start it over"
    return f"last checkpoint {kept.name}; continue it with: {command(f'gpujob resume {folder}')}"


def ended_state(run: Run, code: int | None, how: str = "") -> RunState:
    """The state of a run whose job is no longer running, from its folder and its exit code
    (None where the backend could not tell: a process killed outright, a lost machine)."""
    folder = run.folder
    if whole_summary(folder) is not None:
        return RunState(FINISHED, summary_line(folder), 0)
    error = error_line(folder)
    seen = run.record.last_state
    if code is None and not error and seen.get("state") in (FAILED, CANCELLED, PREEMPTED, OVER_BUDGET):
        return RunState(seen["state"], seen.get("detail", ""))  # what gpujob saw when it ended
    if run.record.cancel_asked:
        return RunState(CANCELLED, f"{cancelled_by(run.record)}; {resume_hint(folder)}", code)
    if code == BUDGET_REACHED:
        return RunState(OVER_BUDGET, f"stopped before resources.max_usd would pass; {budget_hint(folder)}", code)
    if code == INTERRUPTED:  # Ctrl-C (or a closed terminal): the user's own stop
        return RunState(CANCELLED, f"stopped by Ctrl-C; {resume_hint(folder)}", code)
    if code == PREEMPTED_CODE or (code is None and not error):
        return RunState(PREEMPTED, f"{how or 'stopped before it finished'}; {resume_hint(folder)}", code)
    killed = _signal_name(code)
    if killed and not error:  # kill -9, the OOM killer: the run stopped where it was, and can go on
        cause = " (out of memory? the kernel's OOM killer sends SIGKILL)" if killed == "SIGKILL" else ""
        return RunState(PREEMPTED, f"killed by {killed} (exit {code}), not by gpujob{cause}; {resume_hint(folder)}",
                        code)
    return RunState(FAILED, error or f"exit {code}" + (f" ({how})" if how else ""), code)


def cancelled_by(record: "run_record.Submission") -> str:
    """Who cancelled the latest attempt: the user, or the pruner of the sweep it is a trial of."""
    pruned = record.pruned_after
    return "by `gpujob cancel`" if pruned is None else f"by its sweep's pruner after epoch {pruned}"


def budget_hint(folder: Path) -> str:
    kept = RunPaths(folder).newest_checkpoint()
    return (f"last checkpoint {kept.name if kept else 'none'}; continue it under a higher budget with: "
            f"{command(f'gpujob resume {folder} --set resources.max_usd=N')}")


def _signal_name(code: int | None) -> str | None:
    """The signal a shell's exit code 128+N says killed the process, or None."""
    import signal

    if code is None or not 128 < code < 128 + signal.NSIG:
        return None
    try:
        return signal.Signals(code - 128).name
    except ValueError:
        return None


def state_of_error(err: BaseException) -> RunState:
    """What an attached submit that ended with `err` says about the run."""
    code = getattr(err, "exit_code", INTERRUPTED)
    message = getattr(err, "message", "interrupted")
    if code == INTERRUPTED:
        return RunState(CANCELLED, message, code)
    if code == PREEMPTED_CODE:
        return RunState(PREEMPTED, message, code)
    if code == BUDGET_REACHED:
        return RunState(OVER_BUDGET, message, code)
    return RunState(FAILED, message, code)


def record_state(run: Run, state: RunState) -> None:
    """Keep what was seen in the record, for `gpujob runs` (which asks no service)."""
    if run.record.last_state.get("state") != state.state or run.record.last_state.get("detail") != state.detail:
        run.record = run_record.update(run.folder, last_state={"state": state.state, "detail": state.detail,
                                                               "at": run_record.now()})


@contextmanager
def acting_on(run: Run, doing: str):
    """One command at a time acts on a run (two `resume`s never both start it)."""
    try:
        with run_lock.acting_on(run.folder):
            yield
    except run_lock.LockHeld as held:
        raise bad_input(f"{run.folder}: another gpujob command ({run_lock.describe(held.owner)}) is already acting "
                        f"on this run; not {doing} it twice") from None


def refuse_live(run: Run, state: RunState, doing: str) -> None:
    if state.live:
        raise bad_input(f"{run.folder} is still {state.state} ({state.detail}); not {doing} it: follow it with "
                        f"`{command(f'gpujob logs {run.folder} --follow')}`, or stop it with "
                        f"`{command(f'gpujob cancel {run.folder}')}`")
