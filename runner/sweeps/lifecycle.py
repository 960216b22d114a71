"""A sweep's lifecycle from any terminal: its state (from sweep.json and who holds the sweep folder's
lock, never a live conversation with the driver), cancelling it (the record says so first, then the
driver is asked to stop: its running trials checkpoint and end as `cancelled`, resumable), and
starting its driver detached, in a session of its own that outlives the terminal."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from runner.invocation import command
from runner.errors import bad_input
from runner.runs import lock as run_lock
from runner.sweeps import record as rec
from runner.sweeps.record import CANCELLED, RUNNING, SweepRecord

STOP_WAIT_S = 120  # the running trials' checkpoints (train.stop_grace_s is 30 s by default), then some
START_WAIT_S = 60  # --detach: how long the new driver may take to lock the sweep folder
DRIVER_DIR = "driver"  # a detached driver's output.log and exit-code, in the sweep folder


def driver(folder: Path) -> dict | None:
    """The process that runs the sweep (it holds the sweep folder's lock), or None."""
    return run_lock.holder(folder)


def live(folder: Path, sweep: SweepRecord) -> str | None:
    """What runs the sweep now, in one line (its driver here, or the backend's workers); None: nothing."""
    owner = driver(folder)
    if owner is not None:
        return run_lock.describe(owner)
    if sweep.handles:
        from runner.backends.registry import get_backend

        return get_backend(sweep.backend).fanned_out_live(sweep.handles)
    return None


def status_lines(folder: Path) -> list[str]:
    sweep = rec.read(folder)
    owner = live(folder, sweep)
    state = RUNNING if owner is not None else _ended_state(sweep)
    counts: dict[str, int] = {}
    for trial in sweep.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    said = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no trial started"
    where = f" ({owner})" if owner else ""
    lines = [f"{folder.name}: {state}{where}: {len(sweep.trials)} of {sweep.planned} trials started: {said}"]
    lines += [f"  {t.folder} running since {t.started_at}" for t in sweep.trials if t.state == RUNNING and owner]
    if state not in (RUNNING, rec.FINISHED):
        lines.append(f"  continue it with: {command(f'gpujob sweep resume {folder}')}")
    return lines


def _ended_state(sweep: SweepRecord) -> str:
    ended = len(sweep.trials) >= sweep.planned and all(t.state in rec.ENDED for t in sweep.trials)
    if sweep.state == rec.FINISHED or ended:
        return rec.FINISHED
    return CANCELLED if sweep.cancel_asked else "stopped"  # killed, or a terminal that closed


def cancel(folder: Path) -> str:
    """Stop the sweep: no trial starts after this, and the running ones checkpoint and end. Safe to repeat."""
    sweep = rec.read(folder)
    if driver(folder) is None and sweep.handles:
        return _cancel_fanned_out(folder, sweep)
    owner = driver(folder)
    if owner is None:
        return _cancel_what_a_killed_driver_left(folder, sweep)
    if not owner.get("pid") or not run_lock.is_alive(owner):
        raise bad_input(f"{folder} is running as {run_lock.describe(owner)}; cancel it there")
    with rec.updating(folder) as sweep:
        sweep.note("cancel asked")
    _signal(owner["pid"], signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while driver(folder) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if driver(folder) is not None:
        _signal(owner["pid"], signal.SIGKILL)
        return (f"{folder.name} did not stop within {STOP_WAIT_S} s and was killed; resume: "
                f"{command(f'gpujob sweep resume {folder}')}")
    return f"cancelled {folder.name}; its unfinished trials continue with: {command(f'gpujob sweep resume {folder}')}"


def _signal(pid: int, signum: int) -> None:
    import os

    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it ended meanwhile


def start_detached(folder: Path, parallel: int) -> int:
    """`gpujob sweep resume FOLDER` in a session of its own; returns once it holds the sweep's lock."""
    from runner.backends.detached import exit_code, start_detached as start

    command = [sys.executable, "-m", "runner.cli", "sweep", "resume", str(folder), "--parallel", str(parallel)]
    log_dir = folder / DRIVER_DIR
    pid = start(command, log_dir)
    deadline = time.monotonic() + START_WAIT_S
    while driver(folder) is None and exit_code(log_dir) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _cancel_fanned_out(folder: Path, sweep: SweepRecord) -> str:
    from runner.backends.registry import get_backend
    from runner.sweeps.driver import close

    backend = get_backend(sweep.backend)
    if backend.fanned_out_live(sweep.handles) is None:
        return f"{folder.name} is not running; nothing to cancel"
    with rec.updating(folder) as record:
        record.note("cancel asked")
    backend.stop_fan_out(sweep.handles)
    deadline = time.monotonic() + STOP_WAIT_S
    while backend.fanned_out_live(sweep.handles) is not None and time.monotonic() < deadline:
        time.sleep(1)
    close(folder, 0)
    return f"cancelled {folder.name}; its unfinished trials continue with: {command(f'gpujob sweep resume {folder}')}"


def _cancel_what_a_killed_driver_left(folder: Path, sweep: SweepRecord) -> str:
    """A driver killed outright (kill -9, a lost laptop) could not stop what it started elsewhere:
    its trials' Modal calls, containers or instances run on, and a sweep's idle instances bill until
    destroyed. Each trial still live is cancelled through its backend (it checkpoints, as on any
    cancel), and the machines the backend kept for the sweep are given up."""
    from runner.backends.registry import get_backend
    from runner.sweeps.remote import trial_runs

    backend = get_backend(sweep.backend)
    if backend.resumes_here:  # a sweep here: its trials ran in the driver's own processes
        return f"{folder.name} is not running; nothing to cancel"
    trials = trial_runs(folder, sweep)
    # Only a trial the sweep still calls running can be live (an ended one was brought back once
    # its backend said so): the backend is asked about those alone, a service call each.
    unended = {t.folder for t in sweep.trials if t.state == RUNNING}
    live = [run for run in trials if run.folder.name in unended and backend.status(run).live]
    if live:
        with rec.updating(folder) as record:
            record.note("cancel asked")
    said = [backend.cancel(run) for run in live]
    with backend.sweep_machines(0, trials):
        pass  # the machines its driver kept idle are taken back, and given up at once
    if not live:
        return f"{folder.name} is not running; nothing to cancel"
    return "\n".join(said + [f"cancelled {folder.name} (its driver had stopped); its unfinished trials continue "
                              f"with: {command(f'gpujob sweep resume {folder}')}"])
