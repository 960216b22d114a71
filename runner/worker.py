"""The worker: one process of a job. `gpujob run` calls it here, in a container, on a
SLURM node or on Modal; it trains through train.py and, on rank 0, fills the run folder."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from runner import run_folder as rf
from runner import run_lock
from runner.distributed import WorkerContext
from runner.checkpoint import CheckpointStore
from runner.errors import BAD_INPUT, GpujobError, bad_input, job_failed
from runner.stop_signals import Stopped
from runner.spec import JobSpec


def open_run_folder(spec: JobSpec, run_dir: Path | None, runs_dir: Path, resume: bool) -> tuple[rf.RunFolder, bool]:
    """The run folder rank 0 writes, locked for this process (until run_lock.release): a new
    one, or with `resume` the run already in run_dir (then True). Exit 2, touching nothing,
    when another process has it."""
    if resume and run_dir is not None and (Path(run_dir) / rf.SPEC).exists():
        folder, resuming = rf.RunFolder.existing(run_dir), True
    else:
        folder = rf.RunFolder.at(run_dir) if run_dir else rf.RunFolder.create(runs_dir, spec.name)
        resuming = False
    try:
        run_lock.acquire(folder.path)
    except run_lock.LockHeld as held:
        raise bad_input(f"{folder.path} is live: {run_lock.describe(held.owner)} is running it; follow it with "
                        f"`gpujob logs {folder.path} --follow`, stop it with `gpujob cancel {folder.path}`") from None
    return folder, resuming


def run_worker(spec: JobSpec, run_dir: Path | None = None, runs_dir: Path = Path("runs"),
               ctx: WorkerContext | None = None, started: float | None = None, quiet: bool = False,
               resume: bool = False, opened: tuple[rf.RunFolder, bool] | None = None) -> Path | None:
    """Train `spec` in this process and (rank 0) write the run folder; returns its path on rank 0.
    With `resume`, a run_dir that holds a run continues from its last checkpoint. `opened` is
    the folder open_run_folder already gave the caller."""
    from runner.environment import describe_environment
    from runner.plot import plot_loss_curve
    from runner.progress import console_listener
    from runner.train import train

    started = time.perf_counter() if started is None else started
    ctx = ctx or WorkerContext.from_env()
    folder = listeners = store = resume_from = None
    resuming = False
    if ctx.is_main and opened is None:
        opened = open_run_folder(spec, run_dir, runs_dir, resume)
        try:
            return run_worker(spec, runs_dir=runs_dir, ctx=ctx, started=started, quiet=quiet, resume=resume,
                              opened=opened)
        finally:
            run_lock.release(opened[0].path)
    if ctx.is_main:
        folder, resuming = opened
        if resuming:
            rf.remove_interrupted_writes(folder.path)
            if not folder.file(rf.ENV).exists():  # the first start was killed before it got this far
                folder.write_json(rf.ENV, describe_environment())
            store = CheckpointStore(folder.path)
            resume_from = store.load_latest()  # None: killed before its first checkpoint, so start over
            folder.keep_metrics(resume_from["loop"]["records_emitted"] if resume_from else 0)
        else:
            folder.write_text(rf.SPEC, spec.to_yaml())
            folder.write_json(rf.ENV, describe_environment())
            store = CheckpointStore(folder.path)
        console = None if quiet else console_listener()
        listeners = [rf.MetricsListener(folder)] + ([console] if console else [])
    try:
        result = train(spec, ctx, listeners or [], started=started, checkpoints=store, resume_from=resume_from)
    except Stopped as stop:
        where = f"; resume with: gpujob resume {folder.path}" if folder else ""
        raise GpujobError(f"stopped at step {stop.step} by signal {stop.signum}, checkpoint saved{where}",
                          stop.exit_code) from None
    except GpujobError as err:
        if err.exit_code == BAD_INPUT and folder is not None and not resuming:
            folder.discard()  # a spec mistake found at start-up leaves nothing half-written behind
        else:
            _record_failure(folder, err.message)
        raise
    except Exception as err:  # the job's own failure (user code, OOM, ...): keep the traceback in the folder
        where = _record_failure(folder, traceback.format_exc())
        raise job_failed(f"job failed: {type(err).__name__}: {err}" + (f" (traceback in {where})" if where else "")) from err
    finally:
        for listener in listeners or []:
            getattr(listener, "close", lambda: None)()
    if not ctx.is_main:
        return None
    folder.write_json(rf.TIMING, result.timing)
    plot_loss_curve(result.epochs, f"{spec.name}: {spec.model.name} on {spec.data.dataset} "
                    f"({result.summary['device']} x{ctx.world_size})", folder.file(rf.PLOT))
    folder.write_json(rf.SUMMARY, result.summary)  # last: its presence means the run finished
    return folder.path


def _record_failure(folder: rf.RunFolder | None, text: str) -> Path | None:
    if folder is None:
        return None
    folder.write_text("error.log", text)
    return folder.file("error.log")
