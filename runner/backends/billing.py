"""What a rented backend tells its job about money (runner/training/meter.py): the price per hour
of what it rents, when this submission's billing began, and the run's budget as it stands now:
resources.max_usd as submitted, or as `gpujob resume RUN --set resources.max_usd=...` raised it
(kept in the run's record, which every resume reads)."""

from __future__ import annotations

import time

import yaml

from runner.runs.state import Run
from runner.training.meter import Meter

BUDGET_ASK = "max_usd"  # the record's `asks` key for the budget a resume raised


def run_budget(run: Run, spec_yaml: str) -> float | None:
    """The budget the run's next submission gets: a raised one from the record, else the spec's."""
    if run.record.asks.get(BUDGET_ASK) is not None:
        return float(run.record.asks[BUDGET_ASK])
    resources = (yaml.safe_load(spec_yaml) or {}).get("resources") or {}
    return resources.get("max_usd")


def billing_env(run: Run, spec_yaml: str, usd_per_hour: float | None) -> dict[str, str]:
    """The job's environment for the meter, billed from now (the spawn or rent: start-up included):
    every priced run counts its dollars (summary.json's usd, which a budget is held to and Modal's
    cost.json is made from); nothing where the backend knows no price."""
    if usd_per_hour is None:
        return {}
    return Meter(usd_per_hour, time.time(), run_budget(run, spec_yaml)).env()
