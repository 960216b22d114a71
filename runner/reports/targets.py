"""The dry run's word on a job's target and budget: a budget that cannot pay for the start-up
and one epoch is refused before anything is rented; a target gets the prediction the runs
already here support."""

from __future__ import annotations

import math
from pathlib import Path

from runner.errors import bad_input
from runner.reports.estimate import human_duration
from runner.spec.targets import describe, measured, parse_target
from runner.training.meter import usd
from runner.training.prediction import predict


def check_budget(spec, guess) -> None:
    """Exit 2 for a resources.max_usd below the start-up plus one epoch at the estimate's price
    (`guess`: runner/reports/estimate.py's Estimate); nothing to check without a price."""
    max_usd = spec.resources.max_usd
    if max_usd is None or guess.usd_per_hour is None:
        return
    least = guess.usd_per_hour * (guess.startup_s + guess.epoch_s) / 3600
    if max_usd < least:
        raise bad_input(f"resources.max_usd: ${usd(max_usd)} does not pay for the start-up and one epoch (about "
                        f"${usd(least)}: ~{guess.startup_s:.0f} s billed start-up + ~{guess.epoch_s:,.1f} s an epoch "
                        f"at ${guess.usd_per_hour:.2f}/h); give at least that")


def target_note(spec, epoch_s: float, usd_per_hour: float | None, startup_s: float, runs_dir: Path) -> str:
    """The dry run's prediction for train.stop_when: from the curve of a finished run of the same
    model, data and optimizer under runs_dir where there is one (the epoch it met the target at, or
    the fit of its curve), priced at this estimate's epoch time and price; else what the job
    will say and the most the target can cost (all of train.epochs). "" without a target."""
    if not spec.train.stop_when:
        return ""
    conditions = parse_target(spec.train.stop_when, spec.train.step is not None)
    aim = describe(conditions)

    def cost(epochs: float) -> str:
        seconds = startup_s + epochs * epoch_s
        money = f", ~${usd_per_hour * seconds / 3600:.2f}" if usd_per_hour is not None else ""
        return f"{human_duration(seconds)}{money}"
    for name, curve in _similar_curves(spec, runs_dir):
        met = next((r["epoch"] for r in curve if all(c.holds(measured(r, c.metric) or math.nan) for c in conditions)),
                   None)
        if met is not None:
            return f"; target {aim}: run {name} of this model, data and optimizer met it at epoch {met}: {cost(met)}"
        fits = [predict(c, _points(curve, c.metric)) for c in conditions]
        if fits and all(fits):
            slowest = max(fits, key=lambda p: p.epoch if p else 0)
            assert slowest is not None
            at, low, high = (math.ceil(v) for v in (slowest.epoch, slowest.low, slowest.high))
            return (f"; target {aim}: ~epoch {at} ({low}-{high}) by the fit of run {name}'s curve "
                    f"({len(curve)} epochs, same model, data and optimizer): {cost(at)}")
    return (f"; target {aim}: no curve of this job yet (it predicts from its 3rd epoch); "
            f"at most {spec.train.epochs} epoch(s): {cost(spec.train.epochs)}")


def _points(curve: list[dict], metric: str) -> list[tuple[int, float]]:
    return [(r["epoch"], float(v)) for r in curve if (v := measured(r, metric)) is not None]


def _similar_curves(spec, runs_dir: Path):
    """(name, epoch records) of the runs under runs_dir whose spec has this model, data and
    optimizer, newest first."""
    import yaml

    from runner.runs.reading import metrics_records

    mine = spec.model_dump(mode="json")
    for folder in sorted(Path(runs_dir).glob("*/spec.yaml"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            theirs = yaml.safe_load(folder.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if all(theirs.get(key) == mine.get(key) for key in ("model", "data", "optimizer")):
            curve = [r for r in metrics_records(folder.parent / "metrics.jsonl") if r.get("kind") == "epoch"]
            if curve:
                yield folder.parent.name, curve
