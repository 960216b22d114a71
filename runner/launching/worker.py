"""The worker: one process of a job. `gpujob run` calls it here, in a container, on a
SLURM node or on Modal; it trains through train.py and, on rank 0, fills the run folder."""

from __future__ import annotations

import errno
import os
import signal
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from runner.launching.blame import leave_record
from runner.launching.notifying import notifications
from runner.runs import folder as rf
from runner.runs.files import atomic_write, remove_interrupted_writes
from runner.runs.paths import ENV, JOB, METRICS, PLOT, SPEC, SUMMARY, TIMING
from runner.runs import lock as run_lock
from runner.training.distributed import WorkerContext
from runner.training.checkpoint import CheckpointStore
from runner.errors import BAD_INPUT, BUDGET_REACHED, GpujobError, bad_input, job_failed
from runner.invocation import command
from runner.training.meter import usd
from runner.training.stops import EpochEndRule, Stopped
from runner.spec.model import JobSpec


def open_run_folder(spec: JobSpec, run_dir: Path | None, runs_dir: Path, resume: bool) -> tuple[rf.RunFolder, bool]:
    """The run folder rank 0 writes, locked for this process (until run_lock.release): a new
    one, or with `resume` the run already in run_dir (then True). Exit 2, touching nothing,
    when another process has it."""
    if resume and run_dir is not None and (Path(run_dir) / SPEC).exists():
        folder, resuming = rf.RunFolder.existing(run_dir), True
    else:
        folder = rf.RunFolder.at(run_dir) if run_dir else rf.RunFolder.create(runs_dir, spec.name)
        resuming = False
    try:
        run_lock.acquire(folder.path)
    except run_lock.LockHeld as held:
        raise bad_input(f"{folder.path} is live: {run_lock.describe(held.owner)} is running it; follow it with "
                        f"`{command(f'gpujob logs {folder.path} --follow')}`, stop it with "
                        f"`{command(f'gpujob cancel {folder.path}')}`") from None
    return folder, resuming


def run_worker(spec: JobSpec, run_dir: Path | None = None, runs_dir: Path = Path("runs"),
               ctx: WorkerContext | None = None, started: float | None = None, quiet: bool = False,
               resume: bool = False, opened: tuple[rf.RunFolder, bool] | None = None,
               keeps_time_limit: bool = True, epoch_end_rules: Sequence[EpochEndRule] = ()) -> Path | None:
    """Train `spec` here and (rank 0) write the run folder; returns its path on rank 0. `resume`: continue a run_dir
    that holds a run from its last checkpoint; `opened`: what open_run_folder gave; `epoch_end_rules`: a pruner's."""
    from runner.training.loop import train

    started = time.perf_counter() if started is None else started
    ctx = ctx or WorkerContext.from_env()
    folder: rf.RunFolder | None = None  # rank 0's
    listeners: list | None = None if ctx.is_main else _other_node_listeners(ctx, run_dir)
    store: CheckpointStore | None = None
    resume_from: dict | None = None
    resuming = False
    if ctx.is_main and opened is None:
        opened = open_run_folder(spec, run_dir, runs_dir, resume)
        try:
            with notifications(opened[0].path, spec, resuming=opened[1]):  # where the job was given webhooks
                return run_worker(spec, runs_dir=runs_dir, ctx=ctx, started=started, quiet=quiet, resume=resume,
                                  opened=opened, keeps_time_limit=keeps_time_limit, epoch_end_rules=epoch_end_rules)
        finally:
            run_lock.release(opened[0].path)
    if ctx.is_main:
        assert opened is not None, "rank 0 opened it above"
        folder, resuming = opened
        store, resume_from, listeners = _ready_to_train(spec, folder, resuming, quiet)
    try:
        result = train(spec, ctx, listeners or [], started=started, checkpoints=store, resume_from=resume_from,
                       keeps_time_limit=keeps_time_limit, epoch_end_rules=epoch_end_rules)
        if folder is not None:  # rank 0
            _write_results(folder, spec, result, ctx.world_size)
    except Stopped as stop:
        raise _stopped(stop, spec, folder) from None
    except GpujobError as err:
        leave_record(err)  # for the launcher: which rank failed first, and why (runner/launching/blame.py)
        # A spec mistake found at start-up leaves nothing half-written behind; found after
        # something was trained, the run keeps it (discard refuses) and says what went wrong.
        if not (err.exit_code == BAD_INPUT and folder is not None and not resuming and folder.discard()):
            _record_failure(folder, err.message)
            err.run_dir = folder.path if folder else None
        raise
    except OSError as err:
        leave_record(err)
        if err.filename is None and err.errno not in DISK_FULL:
            raise _job_failure(folder, err) from err  # not the file system's: the job's own failure
        error = file_error(err, folder)
        _record_failure(folder, error.message)
        error.run_dir = folder.path if folder else None
        raise error from None
    except (Exception, SystemExit) as err:  # the job's own failure (user code, OOM, ...): traceback kept
        leave_record(err)
        # SystemExit too: a factory or step that calls sys.exit(0) must not pass for a finished job
        failure = _job_failure(folder, err)
        failure.run_dir = folder.path if folder else None
        raise failure from None if isinstance(err, SystemExit) else err
    finally:
        for listener in listeners or []:
            getattr(listener, "close", lambda: None)()
    return folder.path if folder is not None else None


def _ready_to_train(spec: JobSpec, folder: rf.RunFolder, resuming: bool, quiet: bool):
    """Rank 0's side before training: the checkpoint store, the checkpoint to resume from (None:
    start from scratch) with the folder set back to it, or spec.yaml and env.json for a new run;
    and the listeners that write metrics.jsonl and the console's progress."""
    from runner.reports.progress import console_listener
    from runner.training.environment import describe_environment
    from runner.training.sampler import sampler_listeners
    from runner.training.tensorboard_events import tensorboard_listeners

    store, resume_from = CheckpointStore(folder.path), None
    try:
        if resuming:
            resume_from = store.load_latest()  # None: killed before its first checkpoint, so start over
            if resume_from is not None:
                check_same_job(spec, resume_from, folder.file(SPEC))  # before anything is touched
            _prepare_resume(folder, store, resume_from, describe_environment)
        else:
            folder.write_text(SPEC, spec.to_yaml())
            folder.write_json(ENV, describe_environment())
    except OSError as err:
        raise file_error(err, folder) from None
    console = None if quiet else console_listener()
    return store, resume_from, ([rf.MetricsListener(folder), *tensorboard_listeners(folder.path, spec),
                                 *sampler_listeners(folder.path)] + ([console] if console else []))


def _other_node_listeners(ctx: WorkerContext, run_dir: Path | None) -> list:
    """The first worker of a node other than rank 0's samples its node's devices into the run
    folder (shared by the nodes, as SLURM's are); from a launcher, which passes workers on those
    nodes no --run-dir, the folder comes in SAMPLES_TO_ENV."""
    from runner.training.sampler import SAMPLES_TO_ENV, sampler_listeners

    folder = run_dir or os.environ.get(SAMPLES_TO_ENV)
    return sampler_listeners(Path(folder), first_node=False) if folder and ctx.local_rank == 0 else []


def _stopped(stop: Stopped, spec: JobSpec, folder: rf.RunFolder | None) -> GpujobError:
    """A stop that saved its checkpoint: a time limit is a failure, a signal the exit code it asks."""
    where = f"; resume with: {command(f'gpujob resume {folder.path}')}" if folder else ""
    if stop.budget is not None:
        return _over_budget(stop, folder)
    if stop.timed_out:
        error = job_failed(f"the job ran past resources.timeout_minutes ({spec.resources.timeout_minutes} min) "
                           f"and was stopped at step {stop.step}, checkpoint saved{where}")
    else:
        name = signal.Signals(stop.signum).name
        error = GpujobError(f"stopped at step {stop.step} by {name}, checkpoint saved{where}", stop.exit_code)
    error.run_dir = folder.path if folder else None
    return error


def _over_budget(stop: Stopped, folder: rf.RunFolder | None) -> GpujobError:
    """The budget's stop: what was spent, and the resume that raises the budget."""
    spent, max_usd = stop.budget or (0.0, 0.0)
    raise_to = usd(max(2 * max_usd, spent + max_usd))
    how = (f"; continue with: {command(f'gpujob resume {folder.path} --set resources.max_usd={raise_to}')}"
           if folder else "")
    error = GpujobError(f"budget reached: about ${usd(spent)} of resources.max_usd ${usd(max_usd)} spent; stopped "
                        f"at step {stop.step} with a checkpoint{how}", BUDGET_REACHED)
    error.run_dir = folder.path if folder else None
    return error


def _write_results(folder: rf.RunFolder, spec: JobSpec, result, world_size: int) -> None:
    """model.pt, timing.json (with where the time went), the plot, and summary.json (with the
    run's diagnosis) last."""
    import io

    import torch

    from runner.reports.plot import plot_loss_curve

    from runner.reports.diagnosis import as_records, diagnose, shares
    from runner.training.sampler import utilisation_summary

    buffer = io.BytesIO()
    torch.save(result.weights, buffer)
    atomic_write(folder.file("model.pt"), buffer.getvalue())  # the final weights, loadable with torch.load
    result.timing["shares"] = shares(result.timing)
    result.summary["utilisation"] = utilisation_summary(folder.path)  # the device's samples so far; the diagnosis reads it
    result.summary["diagnosis"] = as_records(diagnose(result.summary, result.timing, spec.model_dump(mode="json"),
                                                      folder.read_json(ENV)))
    folder.write_json(TIMING, result.timing)
    short = [name.rpartition(".")[2] for name in (spec.model.name, spec.data.dataset)]  # pkg.mod:f -> mod:f
    plot_loss_curve(result.epochs, f"{spec.name}: {short[0]} on {short[1]} ({result.summary['device']} x{world_size})",
                    folder.file(PLOT))
    folder.write_json(SUMMARY, result.summary)  # last: its presence means the run finished


def _job_failure(folder: rf.RunFolder | None, err: BaseException) -> GpujobError:
    where = _record_failure(folder, traceback.format_exc())
    said = (str(err).strip().splitlines() or [""])[0]  # one line: the rest is in error.log
    if isinstance(err, SystemExit):
        said = f"your code called sys.exit({said}) before the job finished"
    return job_failed(f"job failed: {type(err).__name__}: {said}" + (f" (traceback in {where})" if where else ""))


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def file_error(err: OSError, folder: rf.RunFolder | None) -> GpujobError:
    """What a failed write means to the user, in one line: a full disk fails the job (its last
    good checkpoint is kept); a path that cannot be written (a file where a folder should be,
    read-only) is the user's to fix."""
    path = err.filename or (folder.path if folder else "the run folder")
    if err.errno in DISK_FULL:
        kept = CheckpointStore(folder.path).paths() if folder else []
        last = f"the last good checkpoint {kept[0].name} is kept" if kept else "no checkpoint was written yet"
        resume = f"; free some space, then: {command(f'gpujob resume {folder.path}')}" if folder and kept else ""
        return job_failed(f"the disk is full: writing {path} failed; {last}{resume}")
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return bad_input(f"{path}: a file is where gpujob keeps a folder; move it away, then try again")
    if err.errno == errno.EISDIR:
        return bad_input(f"{path}: a folder is where gpujob writes a file; move it away, then try again")
    return bad_input(f"{path}: {err.strerror or err}; gpujob must be able to write its run folder")


def check_same_job(spec: JobSpec, checkpoint: dict, spec_file: Path) -> None:
    """Exit 2, naming the fields, when the run's spec was edited after its checkpoint in a way
    the checkpoint cannot follow (another model, data or optimizer)."""
    saved = checkpoint.get("spec")
    if saved is None:  # written before checkpoints kept their spec: load_state_dict will tell
        return
    try:  # as this version fills it in (defaults, the dataset's class count), to compare like with like
        saved = JobSpec.model_validate(saved).model_dump(mode="json")
    except ValueError:
        pass
    now = spec.model_dump(mode="json")
    changed = [f"{key} ({before!r} -> {after!r})" for key, before, after in _differences(saved, now)
               if key.split(".")[0] in ("model", "data", "optimizer") or key in ("train.seed", "train.precision")]
    if changed:
        raise bad_input(f"{spec_file}: the spec no longer matches the run's checkpoint; changed since: "
                        f"{', '.join(changed)}; put them back, or start a new run")


def _differences(before: dict, after: dict, prefix: str = ""):
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def _prepare_resume(folder: rf.RunFolder, store: CheckpointStore, resume_from: dict | None, environment) -> None:
    """Say what the resume does, and set the folder back to the checkpoint: metrics cut back to
    it, the last attempt's error.log kept in job/, a missing env.json written."""
    import sys

    if resume_from is None:
        print("gpujob: no checkpoint yet: starting over", file=sys.stderr)
    else:
        assert store.loaded is not None, "load_latest gave the checkpoint it loaded"
        written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(store.loaded.stat().st_mtime))
        print(f"gpujob: resuming from step {resume_from['loop']['step']} (checkpoint {store.loaded.name}, written "
              f"{written})", file=sys.stderr)
    remove_interrupted_writes(folder.path)
    damaged = folder.keep_metrics(resume_from["loop"]["records_emitted"] if resume_from else 0)
    if damaged:
        print(f"gpujob: warning: {METRICS} line(s) {', '.join(map(str, damaged))} were damaged and are "
              "dropped; every intact line is kept", file=sys.stderr)
    stale = folder.file("error.log")
    if stale.exists():  # the failed attempt's: kept, but no longer the run's
        (folder.path / JOB).mkdir(exist_ok=True)
        stale.rename(folder.path / JOB / f"error-{time.strftime('%Y%m%d-%H%M%S')}.log")
    if not folder.file(ENV).exists():  # the first start was killed before it got this far
        folder.write_json(ENV, environment())


def _record_failure(folder: rf.RunFolder | None, text: str) -> Path | None:
    if folder is None:
        return None
    try:
        folder.write_text("error.log", text)
    except OSError:
        return None  # a full or read-only disk: the one-line message is all there is
    return folder.file("error.log")
