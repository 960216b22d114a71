"""One trial, trained in this process: its run folder made as `gpujob submit` makes a local run's
(the record, job/spec.yaml, job/request.json: `status`, `logs`, `resume` and `show` work on it), then
the same worker every backend runs, with the sweep's pruner as a reason to end after an epoch.

Trials run one after another in one process, so the imports (torch, the data's libraries) are paid
once; each trial builds its own data, model and optimizer and seeds itself from its spec, so it
trains exactly as it would alone (tests/test_sweeps.py holds a trial against a separate run)."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runner.errors import INTERRUPTED, PREEMPTED, GpujobError, bad_input
from runner.runs import record as run_record
from runner.runs.files import atomic_write
from runner.runs.folder import RunFolder
from runner.runs.paths import RunPaths
from runner.runs.reading import whole_summary
from runner.spec.model import JobSpec
from runner.sweeps.record import CANCELLED, FAILED, FINISHED, PRUNED

PRUNED_BY = "pruned"  # summary.json's stopped_by for a trial its sweep's pruner ended
LOSS_METRICS = {"train_loss": "loss", "test_loss": "test_loss", "test_accuracy": "test_accuracy"}


@dataclass
class TrialOutcome:
    state: str  # finished | pruned | failed | cancelled (stopped with a checkpoint: resumable)
    epochs: int | None = None
    value: float | None = None
    curve: list = field(default_factory=list)
    detail: str = ""
    wall_s: float = 0.0
    exit_code: int = 0  # for a cancelled trial: the code the sweep exits with


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


def metric_of(record: dict, metric: str) -> float | None:
    """The sweep's metric in an epoch record: a loss or the accuracy, or a test value of a user's step."""
    if metric in LOSS_METRICS:
        return record.get(LOSS_METRICS[metric])
    return (record.get("test_metrics") or {}).get(metric)


class PruneRule:
    """An epoch-end rule for the training loop: reports each epoch's metric to the sweep's judge
    (Optuna's trial) and ends the run, "pruned", when the pruner says so and epochs remain."""

    def __init__(self, metric: str, epochs: int, judge: Callable[[int, float], bool]):
        self.metric, self.epochs, self.judge = metric, epochs, judge

    def __call__(self, record: dict) -> str | None:
        value = metric_of(record, self.metric)
        if value is None:
            raise bad_input(f"sweep.metric: {self.metric}: the trial's epochs report no such value; use test_loss, "
                            "train_loss, test_accuracy (the default step) or a test metric your train.step returns")
        if self.judge(record["epoch"], value) and record["epoch"] < self.epochs:
            return PRUNED_BY
        return None


def start_folder(sweep_dir: Path, number: int, spec: JobSpec, spec_path: Path) -> Path:
    """The trial's run folder, as a local submit makes it, before it trains."""
    from runner.backends.local import LocalBackend

    backend = LocalBackend()
    plan = backend.plan(spec, spec_path, sweep_dir, trial_name(number))
    if plan.world_size != 1:
        raise bad_input(f"resources.processes: a sweep's trials run one worker each here, not {plan.world_size}")
    record = run_record.new_submission(plan.backend, plan.run_name, spec, spec_path, False, plan.world_size)
    record.handles = {"pid": os.getpid(), "host": socket.gethostname(), "sweep": str(Path(sweep_dir).resolve())}
    folder = RunFolder.start(plan.folder, record).path
    paths = RunPaths(folder)
    paths.job.mkdir(exist_ok=True)
    atomic_write(paths.job_spec, spec.to_yaml().encode())
    atomic_write(paths.job_request, (json.dumps(plan.request.to_json(), indent=2) + "\n").encode())
    return folder


def train_trial(folder: Path, spec: JobSpec, rule: PruneRule, resume: bool) -> TrialOutcome:
    """Train the trial in this process (resume: continue it from its folder's last checkpoint)."""
    from runner.launching.worker import run_worker
    from runner.training.distributed import WorkerContext

    started = time.perf_counter()
    if resume:
        run_record.update(folder, handles={"pid": os.getpid(), "host": socket.gethostname()})
    try:
        run_worker(spec, run_dir=folder, runs_dir=folder.parent, ctx=WorkerContext(), quiet=True, resume=resume,
                   epoch_end_rules=[rule])
    except GpujobError as err:
        ended = outcome_of(folder, rule.metric, time.perf_counter() - started)
        if err.exit_code in (INTERRUPTED, PREEMPTED):
            ended.state, ended.exit_code = CANCELLED, err.exit_code
        else:
            ended.state = FAILED
        ended.detail = err.message
        return ended
    return outcome_of(folder, rule.metric, time.perf_counter() - started)


def outcome_of(folder: Path, metric: str, wall_s: float) -> TrialOutcome:
    """What the trial's folder says of it: its epochs' metric, and how it ended."""
    epochs = [r for r in RunFolder(folder).metrics() if r.get("kind") == "epoch"]
    curve = [metric_of(r, metric) for r in epochs]
    summary = whole_summary(folder)
    if summary is None:
        return TrialOutcome(FAILED, len(epochs), curve[-1] if curve else None, curve, wall_s=wall_s)
    state = PRUNED if summary.get("stopped_by") == PRUNED_BY else FINISHED
    detail = f"pruned after epoch {len(epochs)}" if state == PRUNED else ""
    return TrialOutcome(state, len(epochs), curve[-1] if curve else None, curve, detail, wall_s)
