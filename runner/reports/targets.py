"""The dry run's word on a job's target and budget: a budget that cannot pay for the start-up
and one epoch is refused before anything is rented."""

from __future__ import annotations

from runner.errors import bad_input
from runner.training.meter import usd


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
