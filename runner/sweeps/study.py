"""The search and the pruning, from Optuna (ask-and-tell): its grid, random or TPE sampler picks each
trial's values, its median or successive-halving pruner judges each epoch's metric against the
other trials', and its journal file in the sweep folder (optuna.journal) keeps the study, so that a
resumed sweep, or several processes of one, continue the same study.

Sampled values do not depend on which process asks: a random or TPE sampler is seeded with the
sweep's seed plus the number of trials asked before (asking happens under the sweep's lock)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.sweeps.axes import Axis
from runner.sweeps.record import JOURNAL, SweepRecord

if TYPE_CHECKING:
    import optuna

STUDY = "sweep"
# The median pruner compares a trial with the median of the trials before it at the same epoch:
# two finished trials make a median; the first epoch (warm-up, noisy) is never judged. Steps are epochs.
MEDIAN_STARTUP_TRIALS, FIRST_JUDGED_EPOCH = 2, 2


def open_study(folder: Path, sweep: SweepRecord) -> "optuna.Study":
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(logging.WARNING)  # the sweep prints its own line per trial
    storage = JournalStorage(JournalFileBackend(str(Path(folder) / JOURNAL)))
    study = optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True,
                                direction="minimize" if sweep.goal == "min" else "maximize",
                                pruner=_pruner(sweep.pruner))
    study.sampler = _sampler(sweep, len(study.get_trials(deepcopy=False)))
    return study


def _sampler(sweep: SweepRecord, asked_before: int):
    import optuna

    axes = [Axis.from_json(a) for a in sweep.axes]
    if sweep.sampler == "grid":
        return _grid_sampler()({a.field: list(a.values) for a in axes}, seed=sweep.seed)
    seed = sweep.seed + asked_before
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _grid_sampler():
    import optuna

    class AskAndTellGrid(optuna.samplers.GridSampler):
        """GridSampler stops study.optimize once the grid is done, and raises outside it; the sweep
        asks and tells, and counts its trials itself."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return AskAndTellGrid


def _pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=FIRST_JUDGED_EPOCH)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def ask(study: "optuna.Study", sweep: SweepRecord) -> tuple["optuna.Trial", dict[str, Any]]:
    """A new trial and its values, one per axis."""
    trial = study.ask()
    return trial, {axis.field: axis.suggest(trial) for axis in (Axis.from_json(a) for a in sweep.axes)}


def reopen(study: "optuna.Study", number: int) -> "optuna.Trial":
    """A trial asked before (by a sweep that was killed while it ran), to report to and tell again."""
    import optuna

    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.trial.Trial(study, frozen._trial_id)


class Judge:
    """Reports a trial's metric after each epoch and says whether the pruner stops it there."""

    def __init__(self, trial: "optuna.Trial"):
        self.trial = trial

    def __call__(self, epoch: int, value: float) -> bool:
        self.trial.report(value, step=epoch)
        return self.trial.should_prune()


def tell(study: "optuna.Study", number: int, state: str, value: float | None) -> None:
    """The trial's end, as Optuna knows ends: complete with its value, pruned, or failed."""
    from optuna.trial import TrialState

    from runner.sweeps.record import FINISHED, PRUNED

    frozen = study.get_trials(deepcopy=False)[number]
    if frozen.state.is_finished():
        return  # told before the sweep was killed: telling twice is an error in Optuna
    if state == FINISHED and value is not None:
        study.tell(number, value)
    elif state == PRUNED:
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, state=TrialState.FAIL)
