"""Claiming and recording a sweep's trials, under the sweep's lock: the next trial for a worker (one
to continue, or a new one asked of Optuna), and a trial's end told to Optuna and written to
sweep.json. Every way of running trials (in this process, worker processes, a SLURM array's tasks,
submissions to a remote backend) goes through here, so none runs a trial twice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.runs import lock as run_lock
from runner.sweeps import record as rec
from runner.sweeps.record import CANCELLED, ENDED, RUNNING, SweepRecord, TrialRecord
from runner.sweeps.trial import TrialOutcome, trial_name


@dataclass
class Claim:
    number: int
    params: dict
    resume: bool  # the trial's folder holds its earlier attempt: continue it


def claim_next(folder: Path, naming=None) -> Claim | None:
    """The next trial for this process: one to continue, or a new one Optuna picks; `naming` gives
    a new trial's folder name (default trial-NNN)."""
    from runner.sweeps.study import ask, open_study

    with rec.updating(folder) as sweep:
        if sweep.cancel_asked:
            return None
        me = run_lock.identity()
        for trial in sweep.trials:
            if trial.state == CANCELLED or (trial.state == RUNNING and not _owner_alive(trial.owner)):
                trial.state, trial.owner, trial.ended_at = RUNNING, me, None
                return Claim(trial.number, trial.params, resume=True)
        if len(sweep.trials) >= sweep.planned:
            return None
        _optuna_trial, params = ask(open_study(folder, sweep), sweep)
        number = _optuna_trial.number
        sweep.trials.append(TrialRecord(number, (naming or trial_name)(number), params, owner=me))
        return Claim(number, params, resume=False)


def _owner_alive(owner: dict | None) -> bool:
    """Whether the process running a trial is still there; one on another machine (a SLURM node)
    only that machine can tell: taken as alive until the sweep is resumed (reclaim_orphans)."""
    if not owner:
        return False
    import socket

    return owner.get("host") != socket.gethostname() or run_lock.is_alive(owner)


def reclaim_orphans(folder: Path) -> None:
    """On `sweep resume`, when none of the sweep's workers runs any more: a trial still recorded as
    running lost its process (kill -9, a lost node) and is continued like a cancelled one."""
    with rec.updating(folder) as sweep:
        for trial in sweep.trials:
            if trial.state == RUNNING:
                trial.state, trial.owner = CANCELLED, None
                trial.detail = "its process was gone when the sweep was resumed"


def finish_trial(folder: Path, number: int, outcome: TrialOutcome) -> SweepRecord:
    from runner.sweeps.study import open_study, tell

    with rec.updating(folder) as sweep:
        trial = sweep.trial(number)
        trial.state, trial.epochs, trial.value = outcome.state, outcome.epochs, _finite(outcome.value)
        trial.curve = [_finite(v) for v in outcome.curve]
        trial.detail, trial.owner, trial.ended_at = outcome.detail, None, rec.now()
        trial.wall_s = round((trial.wall_s or 0.0) + outcome.wall_s, 3)
        if outcome.state in ENDED:
            tell(open_study(folder, sweep), number, outcome.state, trial.value)
    return sweep


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def trial_line(sweep: SweepRecord, trial: TrialRecord) -> str:
    values = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    result = f"{sweep.metric} {trial.value:.4g}" if trial.value is not None else "no result"
    how = {"finished": f"after {trial.epochs} epoch(s)", "pruned": f"pruned after epoch {trial.epochs}"}.get(
        trial.state, f"{trial.state}: {trial.detail}")
    return f"{trial.folder} {values}: {result}, {how} ({trial.wall_s or 0:.1f} s)"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
