"""The pruner for a sweep's trials that run elsewhere (Modal, vast.ai, Docker): while a trial runs,
the driver reads the epochs it has closed as its backend shows them (Backend.epochs_so_far: a
folder written here, else the job's output), reports each new epoch's metric to the trial's Optuna
trial, and when the pruner says so, cancels it: the job checkpoints and ends as on any cancel, and
the trial is recorded pruned at the epoch the pruner judged, told to Optuna as pruned, and never
run again. A job keeps training while its epoch is read and judged, so it stops a little past that
epoch (its checkpoint is where it stopped); the record keeps the judged epoch and its curve to it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runner.runs.state import Run
from runner.sweeps.record import FINISHED, PRUNED, SweepRecord
from runner.sweeps.trial import TrialOutcome, metric_of

if TYPE_CHECKING:
    import optuna

EPOCHS_EVERY_S = 2.0  # how often a running trial's epochs are asked of its backend (a service's logs)


@dataclass
class Followed:
    """What the driver has seen of one running trial's epochs."""

    judge: Callable[[int, float], bool]  # runner.sweeps.study.Judge: reports an epoch, says whether to prune
    seen: dict = field(default_factory=dict)  # epoch -> the metric, for each epoch seen
    reported: set = field(default_factory=set)  # epochs told to Optuna already (by this or an earlier driver)
    asked_at: float = 0.0
    pruned_at: int | None = None  # the epoch the pruner stopped it after


class RemotePruner:
    """Judges the running trials of one remote sweep; with pruner none it asks nothing."""

    def __init__(self, folder: Path, sweep: SweepRecord):
        self.folder, self.metric, self.on = folder, sweep.metric, sweep.pruner != "none"
        self.epochs = int(sweep.base["train"]["epochs"])
        self.followed: dict[int, Followed] = {}
        self._study: "optuna.Study | None" = None  # opened once the first trial is judged

    def should_stop(self, backend, number: int, run: Run) -> bool:
        """Whether the pruner has just stopped this running trial (read its new epochs first)."""
        if not self.on:
            return False
        followed = self._followed(number)
        if followed.pruned_at is not None or time.monotonic() - followed.asked_at < EPOCHS_EVERY_S:
            return False
        followed.asked_at = time.monotonic()
        for record in backend.epochs_so_far(run):
            epoch, value = record.get("epoch"), metric_of(record, self.metric)
            if not isinstance(epoch, int) or value is None or epoch in followed.seen:
                continue
            followed.seen[epoch] = value
            if epoch in followed.reported:
                continue
            followed.reported.add(epoch)
            if followed.judge(epoch, value) and epoch < self.epochs:
                followed.pruned_at = epoch
                return True
        return False

    def outcome(self, number: int, brought_back: TrialOutcome) -> TrialOutcome:
        """A trial's end as recorded: pruned at the judged epoch where the pruner stopped it, unless
        it had finished on its own before the stop reached it."""
        followed = self.followed.pop(number, None)
        if followed is None or followed.pruned_at is None or brought_back.state == FINISHED:
            return brought_back
        epoch = followed.pruned_at
        curve = (brought_back.curve[:epoch] if len(brought_back.curve) >= epoch
                 else [followed.seen[e] for e in sorted(followed.seen) if e <= epoch])
        stopped = f"; stopped with a checkpoint after {brought_back.epochs} epoch(s)" if brought_back.epochs else ""
        return TrialOutcome(PRUNED, epoch, curve[-1] if curve else None, curve,
                            f"pruned after epoch {epoch}{stopped}", brought_back.wall_s)

    def _followed(self, number: int) -> Followed:
        if number not in self.followed:
            from runner.sweeps import record as rec
            from runner.sweeps.study import Judge, open_study, reopen

            study = self._study = self._study or open_study(self.folder, rec.read(self.folder))
            trial = reopen(study, number)
            reported = set(study.get_trials(deepcopy=False)[number].intermediate_values)
            self.followed[number] = Followed(Judge(trial), reported=reported)
        return self.followed[number]
