"""A sweep from its spec to its end: planned (axes checked, every grid point's spec validated, the
sweep folder and sweep.json written), then worked through by one or more processes, each of which
claims the next trial under the sweep's lock, trains it in-process and records how it ended.

A trial is claimed as the record says: a trial left running by a process that is gone (kill -9 of
the sweep) or one stopped with a checkpoint (cancel) is continued from that checkpoint; otherwise
Optuna is asked for a new one until the sweep has its planned number. A trial that ended (finished,
pruned, failed) is never run again."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.invocation import command
from runner.errors import INTERRUPTED, PREEMPTED, bad_input
from runner.runs import lock as run_lock
from runner.runs.folder import RunFolder
from runner.spec.model import JobSpec
from runner.spec.reading import read_spec_file
from runner.spec.sweep import SweepSpec
from runner.sweeps import record as rec
from runner.sweeps.axes import check_axes, from_option, from_spec, grid_points, spec_with
from runner.sweeps.record import CANCELLED, ENDED, RUNNING, SweepRecord
from runner.sweeps.claims import Claim, claim_next, finish_trial, trial_line
from runner.sweeps.trial import LOSS_METRICS, TrialOutcome, trial_name

SWEEP_SUFFIX = "sweep"  # a sweep folder: runs/NAME-sweep-YYYYmmdd-HHMMSS


@dataclass
class SweepPlan:
    record: SweepRecord
    folder: Path
    specs: list[JobSpec]  # every trial's spec where they are known before the start (a grid); else []


def plan_sweep(job: JobSpec, spec_path: Path, runs_dir: Path, grid: list[str], random: int | None,
               seed: int | None) -> SweepPlan:
    """The sweep as the spec's `sweep:` section and the options ask for it, checked whole: exit 2
    naming the axis for a field that does not exist, a value the spec refuses, an empty grid."""
    sweep = job.sweep or SweepSpec()
    _raw, lines = read_spec_file(spec_path)
    given = [from_option(text) for text in grid]
    written = [a for a in from_spec(sweep.axes, str(spec_path), lines) if a.field not in {g.field for g in given}]
    axes = written + given
    base = _base(job, _raw)
    check_axes(axes, base, str(spec_path))
    _check_metric(sweep.metric, job)
    if random is not None and random < 1:
        raise bad_input(f"--random {random}: give the number of trials to draw, at least 1")
    sampler = "random" if random is not None else sweep.sampler or (
        "grid" if all(not a.is_range for a in axes) else "random")
    ranged = [a for a in axes if a.is_range]
    if sampler == "grid" and ranged:
        raise bad_input(f"{ranged[0].origin}: a range is sampled, not a grid; add --random N (or sweep.sampler: "
                        "random or tpe with sweep.trials: N)")
    planned = len(grid_points(axes)) if sampler == "grid" else (random or sweep.trials)
    if not planned:
        raise bad_input(f"{spec_path}: sweep.trials: how many trials to draw with sampler {sampler}; "
                        "give it, or --random N")
    name = RunFolder.free_name(runs_dir, f"{job.name}-{SWEEP_SUFFIX}")
    specs = ([spec_with(base, point, str(spec_path), {a.field: a.origin for a in axes}, name=_trial_spec_name(job, i))
              for i, point in enumerate(grid_points(axes))] if sampler == "grid" else [])
    record = SweepRecord(job.name, str(spec_path), base, [a.to_json() for a in axes], sampler, planned,
                         sweep.seed if seed is None else seed, sweep.metric, sweep.goal, sweep.pruner,
                         sweep.max_parallel, sweep.max_usd, backend=_backend_for(job))
    return SweepPlan(record, Path(runs_dir) / name, specs)


def _backend_for(job: JobSpec) -> str:
    from runner.backends.auto import choose_backend

    return choose_backend(job)[0]


def _base(job: JobSpec, raw: Any) -> dict:
    """The spec every trial starts from: as resolved, without its sweep section, and without the
    class count the dataset gave it unless the spec set one (an axis may change the dataset)."""
    base = job.model_dump(mode="json", exclude={"sweep"})
    written = isinstance(raw, dict) and isinstance(raw.get("model"), dict) and "num_classes" in raw["model"]
    if not written:
        base["model"].pop("num_classes", None)
    return base


def _check_metric(metric: str, job: JobSpec) -> None:
    if job.train.step is None and metric not in LOSS_METRICS:
        raise bad_input(f"sweep.metric: '{metric}' is not one of {', '.join(LOSS_METRICS)} (a train.step of your "
                        "own may report others)")
    if job.train.step is not None and metric == "test_accuracy":
        raise bad_input("sweep.metric: test_accuracy is reported by the default step only; use test_loss or a "
                        "test metric your train.step returns")


def _trial_spec_name(job: JobSpec, number: int) -> str:
    return f"{job.name}-{trial_name(number)}"[:80]


def start(plan: SweepPlan) -> Path:
    """Make the sweep folder and its record: from here on `gpujob sweep status` knows it."""
    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        plan.folder.mkdir()
    except FileExistsError:
        raise bad_input(f"{plan.folder}: exists; a sweep never writes into another's folder") from None
    plan.record.note("started")
    rec.write(plan.folder, plan.record)
    return plan.folder


# ---- working through the trials ----------------------------------------------------------------

class Signals:
    """SIGTERM, SIGINT and SIGHUP between trials: noted, so that no trial starts after them (during
    a trial the training loop's own StopRequest takes them: it checkpoints and stops the trial)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "Signals":
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def exit_code(self) -> int:
        return INTERRUPTED if self.signum == signal.SIGINT else PREEMPTED


def work(folder: Path, say=print, signals: Signals | None = None) -> int:
    """Claim, train and record trials until none is left (or the sweep is stopped); returns the
    exit code for the process: 0, or that of the stop (130, 143)."""
    while True:
        if signals is not None and signals.signum is not None:
            return signals.exit_code
        claim = claim_next(folder)
        if claim is None:
            return 0
        outcome = run_claim(folder, claim)
        sweep = finish_trial(folder, claim.number, outcome)
        say(trial_line(sweep, sweep.trial(claim.number)))
        if outcome.state == CANCELLED:
            return outcome.exit_code


def run_claim(folder: Path, claim: Claim) -> TrialOutcome:
    from runner.sweeps.study import Judge, open_study, reopen
    from runner.sweeps.trial import PruneRule, start_folder, train_trial

    sweep = rec.read(folder)
    spec_path = Path(sweep.spec_path)
    try:
        spec = spec_with(sweep.base, claim.params, sweep.spec_path, name=f"{sweep.name}-{trial_name(claim.number)}"[:80])
    except Exception as err:  # a sampled value the spec refuses: this trial fails, the sweep goes on
        return TrialOutcome("failed", detail=getattr(err, "message", str(err)))
    trial_dir = folder / trial_name(claim.number)
    resume = claim.resume and trial_dir.is_dir()
    if not resume:
        if trial_dir.exists():  # made by a claim killed before it trained: nothing of a user's is in it
            _set_aside(trial_dir)
        start_folder(folder, claim.number, spec, spec_path)
    judge = Judge(reopen(open_study(folder, sweep), claim.number))
    return train_trial(trial_dir, spec, PruneRule(sweep.metric, spec.train.epochs, judge), resume=resume)


def _set_aside(trial_dir: Path) -> None:
    trial_dir.rename(trial_dir.with_name(f"{trial_dir.name}-unstarted-{time.strftime('%Y%m%d-%H%M%S')}"))


def run_here(folder: Path, parallel: int = 1, say=print) -> int:
    """Work through the sweep here, in this process or `parallel` worker processes, holding the
    sweep folder's lock (how `status` knows it runs and `cancel` whom to stop); then mark it ended
    and write its report."""
    from runner.sweeps.report import write_report

    try:
        run_lock.acquire(folder)
    except run_lock.LockHeld as held:
        raise bad_input(f"{folder} is running: {run_lock.describe(held.owner)}; follow it with "
                        f"`{command(f'gpujob sweep status {folder}')}`, stop it with "
                        f"`{command(f'gpujob sweep cancel {folder}')}`") from None
    from runner.backends.registry import get_backend

    backend = get_backend(rec.read(folder).backend)
    try:
        with Signals() as signals:
            if not backend.resumes_here:
                from runner.sweeps.remote import run_remote

                code = run_remote(folder, backend, signals, say)
            elif parallel == 1:
                _share_cores(1)
                code = work(folder, say, signals)
            else:
                code = _in_worker_processes(folder, parallel, signals)
    finally:
        run_lock.release(folder)
    close(folder, code)
    write_report(folder)
    return code


def _share_cores(workers: int) -> None:
    """Each process's intra-op threads, as the launcher gives a job's workers (runner/training/threads.py):
    set before torch is imported, so a trial here runs as it would alone."""
    from runner.training.threads import THREADS_WHY, choose_threads, machine_load

    threads = choose_threads(workers, os.environ, load=machine_load())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads.threads))
    os.environ[THREADS_WHY] = threads.why
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"].split(",")[0]))


WORKERS = "GPUJOB_SWEEP_WORKERS"  # a worker process's count of sibling workers, for its share of the cores


def check_parallel(parallel: int) -> None:
    from runner.training.threads import cores_available

    cores = cores_available()
    if not 1 <= parallel <= cores:
        raise bad_input(f"--parallel {parallel}: between 1 and this machine's {cores} core(s); each trial "
                        "process gets its share of them")


def _in_worker_processes(folder: Path, parallel: int, signals: Signals) -> int:
    """`parallel` processes of `gpujob sweep work FOLDER`, each claiming trials in turn; a stop
    asked of this driver is passed on to them (their running trials checkpoint)."""
    import subprocess

    command = [sys.executable, "-m", "runner.cli", "sweep", "work", str(folder)]
    workers = [subprocess.Popen(command, env={**os.environ, WORKERS: str(parallel)}) for _ in range(parallel)]
    passed_on = False
    while any(w.poll() is None for w in workers):
        if signals.signum is not None and not passed_on:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signals.signum)
            passed_on = True
        time.sleep(0.1)
    codes = [w.returncode for w in workers]
    return signals.exit_code if signals.signum is not None else next((c for c in codes if c), 0)


def work_in_this_worker(folder: Path, say=print) -> int:
    """One of a parallel sweep's worker processes (the driver holds the sweep's lock)."""
    _share_cores(int(os.environ.get(WORKERS, "1")))
    with Signals() as signals:
        return work(folder, say, signals)


FOLLOW_POLL_S = 1.0


def fan_out(folder: Path, parallel: int) -> dict:
    """Hand the trials not yet ended to the sweep's backend (a SLURM array); its handles are recorded."""
    from runner.backends.registry import get_backend

    sweep = rec.read(folder)
    left = sweep.planned - sum(t.state in ENDED for t in sweep.trials)
    spec = JobSpec.model_validate(sweep.base)
    handles = get_backend(sweep.backend).fan_out(spec, folder, left, parallel)
    with rec.updating(folder) as record:
        record.handles = handles
        record.note("fanned out", backend=record.backend, trials=left, **handles)
    return handles


def follow(folder: Path, say=print) -> int:
    """Print each trial's line as it ends, until the backend's workers have all ended; Ctrl-C stops
    them (their trials checkpoint). Then the sweep's state and its report."""
    from runner.backends.registry import get_backend
    from runner.sweeps.report import write_report

    sweep = rec.read(folder)
    backend, said = get_backend(sweep.backend), {t.number for t in sweep.trials if t.state in ENDED}
    code = 0
    try:
        while True:
            live = backend.fanned_out_live(sweep.handles)
            sweep = rec.read(folder)
            for trial in sweep.trials:
                if trial.state in ENDED + (CANCELLED,) and trial.number not in said:
                    said.add(trial.number)
                    say(trial_line(sweep, trial))
            if live is None:
                break
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        with rec.updating(folder) as record:
            record.note("cancel asked")
        backend.stop_fan_out(sweep.handles)
        code = INTERRUPTED
    close(folder, code)
    write_report(folder)
    return code


def close(folder: Path, code: int) -> None:
    with rec.updating(folder) as sweep:
        done = all(t.state in ENDED for t in sweep.trials) and len(sweep.trials) >= sweep.planned
        sweep.state = rec.FINISHED if done else (CANCELLED if sweep.cancel_asked or code else RUNNING)
        if done:
            sweep.note("finished")
