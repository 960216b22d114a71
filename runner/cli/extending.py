"""`gpujob resume RUN --set train.epochs=N`: train a finished or stopped run further, from its
last checkpoint, into the same folder. Only how long it trains may change (train.epochs,
train.max_steps): the checkpoint holds everything else (model, data, optimizer, seed), and a
learning-rate schedule was planned for the run's old length."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import bad_input
from runner.runs import record as run_record
from runner.runs.files import atomic_write
from runner.runs.paths import JOB, METRICS, SUMMARY
from runner.runs.reading import metrics_records
from runner.runs.state import Run

if TYPE_CHECKING:
    from runner.spec.model import JobSpec

EXTENDABLE = ("train.epochs", "train.max_steps")


def extension(run: Run, overrides: list[str], continues_here: bool) -> "JobSpec":
    """The run's spec with `overrides` applied, once they are known to extend it: exit 2, naming
    the field, for anything else. Reads only; nothing is touched."""
    from runner.spec.load import load_spec

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in EXTENDABLE:
            raise bad_input(f"--set {key}: resume changes only {' and '.join(EXTENDABLE)} (to train the run further); "
                            "its checkpoint holds the rest: start a new run to change it")
    if not continues_here:
        raise bad_input(f"--set: backend {run.record.backend} continues a run from the request it was sent "
                        "(job/request.json), which keeps the old length; add --here to train it further on this machine")
    spec = load_spec(run.paths.spec, overrides)
    if spec.optimizer.schedule != "none":
        raise bad_input(f"--set: optimizer.schedule {spec.optimizer.schedule} was planned for the run's old length "
                        "and cannot be stretched; start a new run to train longer")
    epochs_done, steps_done = _done(run.folder)
    given = {item.partition("=")[0].strip() for item in overrides}
    if "train.epochs" in given and spec.train.epochs <= epochs_done:
        raise bad_input(f"--set train.epochs={spec.train.epochs}: the run has done {epochs_done} epoch(s); "
                        "give more to train it further")
    if "train.max_steps" in given and spec.train.max_steps is not None and spec.train.max_steps <= steps_done:
        raise bad_input(f"--set train.max_steps={spec.train.max_steps}: the run has taken {steps_done} steps; "
                        "give more, or null for no cap")
    return spec


def extend(run: Run, spec: "JobSpec") -> None:
    """Make the run folder ask for the longer run: its spec rewritten, its record's ask updated,
    and the summary of the shorter run kept in job/ (while it lies in the folder the run counts
    as finished, whatever happens to the extension)."""
    paths = run.paths
    summary = paths.folder / SUMMARY
    if summary.exists():
        (paths.folder / JOB).mkdir(exist_ok=True)
        os.replace(summary, _free(paths.folder / JOB / f"summary-{_done(run.folder)[0]}-epochs.json"))
    atomic_write(paths.spec, spec.to_yaml().encode())
    run.record.asks["epochs"] = spec.train.epochs
    run.record.note(f"extended to {spec.train.epochs} epochs" + (f", {spec.train.max_steps} steps at most"
                                                                 if spec.train.max_steps else ""))
    run_record.write(run.folder, run.record)


def _done(folder: Path) -> tuple[int, int]:
    """The epochs closed and the steps taken, as the run's metrics record them."""
    records = metrics_records(folder / METRICS)
    epochs = [r["epoch"] for r in records if r.get("kind") == "epoch" and isinstance(r.get("epoch"), int)]
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    return max(epochs, default=0), max(steps, default=0)


def _free(path: Path) -> Path:
    """`path`, or the first `path.N` that does not exist: nothing kept before is overwritten."""
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}.{n}{path.suffix}"), n + 1
    return candidate


BUDGET = "resources.max_usd"


def budget_raise(run: Run, overrides: list[str], rents: bool) -> tuple[float | None, list[str]]:
    """`--set resources.max_usd=X` among the overrides: the raised budget (exit 2 unless it is more
    than the run's budget now, on a backend that rents), and the other overrides. Reads only."""
    from runner.backends.billing import run_budget
    from runner.spec.load import load_spec

    raised = [item for item in overrides if item.partition("=")[0].strip() == BUDGET]
    rest = [item for item in overrides if item not in raised]
    if not raised:
        return None, rest
    if not rents:
        raise bad_input(f"--set {BUDGET}: backend {run.record.backend} runs on machines gpujob does not rent; "
                        "nothing is priced, so there is no budget to raise")
    spec_file = run.paths.spec if run.paths.spec.exists() else run.paths.job_spec
    value = load_spec(spec_file, raised[-1:]).resources.max_usd  # validated as the spec's own field
    now = run_budget(run, spec_file.read_text())
    if value is None or (now is not None and value <= now):
        raise bad_input(f"--set {BUDGET}={value}: the run's budget is ${now:.2f}; give more to continue it"
                        if now is not None else f"--set {BUDGET}: give a budget in US$, e.g. {BUDGET}=20")
    return value, rest


def raise_budget(run: Run, value: float) -> None:
    """The run's record keeps the raised budget: every later submission of the run is sent it."""
    from runner.backends.billing import BUDGET_ASK

    run.record.asks[BUDGET_ASK] = value
    run.record.note(f"budget raised to ${value:.2f}")
    run_record.write(run.folder, run.record)

