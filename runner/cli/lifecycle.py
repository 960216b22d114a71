"""What every backend's lifecycle shares: finding a run, the state a run folder shows once its
job has ended, the progress lines its metrics make, and the rules `resume` and `cancel` keep
(never two at once, never a second copy of a live job)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from runner.runs import lock as run_lock

from runner.runs import record as run_record
from runner.backends import CANCELLED, FAILED, FINISHED, PREEMPTED, Run, RunState
from runner.errors import bad_input, last_error_line
from runner.runs.paths import METRICS, SUMMARY
from runner.runs.folder import read_summary
from runner.training.stops import INTERRUPTED, PREEMPTED as PREEMPTED_CODE

ERROR_LOG = "error.log"


def find_run(run: str | Path, runs_dir: Path) -> Run:
    """A run given as its folder or as its name under runs_dir; exit 2 when it is not a run."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if candidate.is_dir():
            return Run(candidate, run_record.read(candidate))
    raise bad_input(f"{run}: no such run folder (nor {Path(runs_dir) / str(run)})")


def last_checkpoint(folder: Path) -> str | None:
    from runner.training.checkpoint import CheckpointStore

    paths = CheckpointStore(folder).paths()
    return paths[0].name if paths else None


def resume_hint(folder: Path) -> str:
    kept = last_checkpoint(folder)
    if kept is None:
        return "no checkpoint was written; `gpujob resume` would start it over"
    return f"last checkpoint {kept}; continue it with: gpujob resume {folder}"


def ended_state(run: Run, code: int | None, how: str = "") -> RunState:
    """The state of a run whose job is no longer running, from its folder and its exit code
    (None where the backend could not tell: a process killed outright, a lost machine)."""
    folder = run.folder
    if read_summary(folder) is not None:
        return RunState(FINISHED, summary_line(folder), 0)
    error = _error_line(folder)
    seen = run.record.last_state
    if code is None and not error and seen.get("state") in (FAILED, CANCELLED, PREEMPTED):
        return RunState(seen["state"], seen.get("detail", ""))  # what gpujob saw when it ended
    stopped = code in (PREEMPTED_CODE, INTERRUPTED) or (code is None and not error)
    if stopped or run.record.cancel_asked:
        state = CANCELLED if run.record.cancel_asked else PREEMPTED
        why = "cancelled" if state == CANCELLED else (how or "stopped before it finished")
        return RunState(state, f"{why}; {resume_hint(folder)}", code)
    return RunState(FAILED, error or f"exit {code}" + (f" ({how})" if how else ""), code)


def state_of_error(err: BaseException) -> RunState:
    """What an attached submit that ended with `err` says about the run."""
    code = getattr(err, "exit_code", INTERRUPTED)
    message = getattr(err, "message", "interrupted")
    if code == INTERRUPTED:
        return RunState(CANCELLED, message, code)
    if code == PREEMPTED_CODE:
        return RunState(PREEMPTED, message, code)
    return RunState(FAILED, message, code)


def _error_line(folder: Path) -> str:
    path = folder / ERROR_LOG
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return last_error_line(lines) + f" (see {path})"


def summary_line(folder: Path) -> str:
    s = read_summary(folder)
    try:
        from runner.reports.progress import test_result

        return (f"{test_result(s, ', ')}, {s['epochs']} epoch(s) in {s['wall_s']:.1f} s on {s['device']} "
                f"x{s['world_size']}")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{SUMMARY} is damaged"


def progress_lines(folder: Path) -> list[str]:
    """metrics.jsonl as the progress lines the job printed (step and epoch lines)."""
    from runner.reports.progress import epoch_line, step_line
    from runner.runs.view import metrics_records

    lines = []
    for record in metrics_records(folder / METRICS):  # a line that is not a record is left out
        try:
            lines.append(epoch_line(record) if record.get("kind") == "epoch" else step_line(record))
        except (KeyError, TypeError, ValueError):
            continue  # a record lacking what a progress line shows
    if (folder / ERROR_LOG).exists():
        lines.append(f"gpujob: {_error_line(folder)}")
    return lines


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
                        f"`gpujob logs {run.folder} --follow`, or stop it with `gpujob cancel {run.folder}`")


def resume_run(run: Run, detach: bool, here: bool, workers_here) -> bool:
    """`gpujob resume`: continue the run on its backend, or with `here` on this machine with
    workers_here(spec) workers (checked before anything is touched). False when it had finished."""
    from runner.backends import get_backend
    from runner.runs.paths import SPEC
    from runner.runs.folder import RunFolder
    from runner.spec.model import load_spec

    from runner.training.datasets import CODE_PATHS, code_paths_for

    origin = run.record.submitted_from
    if origin.get("spec"):  # the factories the spec names are found where they were at submission
        os.environ[CODE_PATHS] = code_paths_for(origin["spec"], origin.get("cwd"))
    backend = get_backend(run.record.backend)
    workers = None
    if here or run.record.backend == "local":
        RunFolder.existing(run.folder)
        workers = workers_here(load_spec(run.folder / SPEC))
    with acting_on(run, "resuming"):
        state = backend.status(run)
        refuse_live(run, state, "resuming")
        if state.state == FINISHED:
            return False
        run.record.note("resumed")
        if workers is not None and run.record.backend != "local":
            run.record.note(f"moved here from backend {run.record.backend}")
            run.record.backend = "local"  # the record names the backend that runs the job now
        run_record.write(run.folder, run.record)
        if workers is not None:
            from runner.backends.local import resume_here

            resume_here(run, workers, detach)
        else:
            backend.resume(run, detach)
    return True
