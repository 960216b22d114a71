"""What the run has cost so far, seen from inside the job, and its budget (resources.max_usd).

A rented backend tells its worker the price per hour and when this submission's billing began
(the spawn or the rent: start-up included), and the budget as the run's spec says it now (a
resume may raise it); the worker adds the time since. Each checkpoint keeps what its attempt had
cost (LoopState.attempts), so a resumed run counts its earlier submissions too. On the user's own
hardware nothing is priced (no meter).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

PRICE = "GPUJOB_USD_PER_HOUR"  # what the backend rents, per hour
BILLED_SINCE = "GPUJOB_BILLED_SINCE"  # Unix time this submission's billing began (start-up included)
MAX_USD = "GPUJOB_MAX_USD"  # resources.max_usd as the run's spec says it when the job was sent


@dataclass(frozen=True)
class Meter:
    usd_per_hour: float
    billed_since: float
    max_usd: float | None = None

    def submission_usd(self, now: float | None = None) -> float:
        """This submission's dollars so far (Modal's retries of one submission share its clock)."""
        now = time.time() if now is None else now
        return self.usd_per_hour * max(now - self.billed_since, 0.0) / 3600

    def billing(self) -> dict:
        """What an attempt's record keeps, for a later submission's `spent_before`."""
        return {"since": self.billed_since, "usd": self.submission_usd()}

    def env(self) -> dict[str, str]:
        """What a backend sets in the job's environment for `from_env` to read there."""
        said = {PRICE: repr(self.usd_per_hour), BILLED_SINCE: repr(self.billed_since)}
        return {**said, MAX_USD: repr(self.max_usd)} if self.max_usd is not None else said


def from_env(environ: Mapping[str, str] = os.environ) -> Meter | None:
    """The meter a rented backend set up; None where nothing is priced."""
    if not environ.get(PRICE):
        return None
    max_usd = environ.get(MAX_USD)
    return Meter(float(environ[PRICE]), float(environ.get(BILLED_SINCE) or time.time()),
                 float(max_usd) if max_usd else None)


def spent_before(attempts: list[dict], meter: Meter) -> float:
    """Earlier submissions' dollars, as their attempts' checkpoints left them: the attempts of one
    submission share its billing clock, so each submission counts once, at its latest."""
    latest: dict[float, float] = {}
    for attempt in attempts:
        bill = attempt.get("billing")
        if isinstance(bill, dict) and bill.get("since") != meter.billed_since:
            latest[bill["since"]] = max(latest.get(bill["since"], 0.0), float(bill["usd"]))
    return sum(latest.values())


class Budget:
    """resources.max_usd against the meter: whether going on for `ahead_s` more would pass it."""

    def __init__(self, meter: Meter, max_usd: float, save_s: float):
        self.meter, self.max_usd, self.save_s = meter, max_usd, save_s
        self.earlier_usd = 0.0  # set from the checkpoint a resume starts from

    def count_earlier(self, attempts) -> None:
        self.earlier_usd = spent_before(list(attempts), self.meter)

    def spent(self, now: float | None = None) -> float:
        return self.earlier_usd + self.meter.submission_usd(now)

    def would_pass(self, ahead_s: float) -> bool:
        """Going on `ahead_s` and then saving a checkpoint would spend more than the budget."""
        return self.spent(time.time() + ahead_s + self.save_s) > self.max_usd


def budget_for(spec) -> Budget | None:
    """The run's budget where a backend prices it; resources.max_usd as the backend last sent it."""
    meter = from_env()
    max_usd = meter.max_usd if meter and meter.max_usd is not None else spec.resources.max_usd
    if meter is None or max_usd is None:
        return None
    return Budget(meter, max_usd, spec.train.stop_grace_s)


def unpriced_budget(spec, where: str):
    """The error for a budget where gpujob prices nothing (the user's own machines), or None."""
    from runner.errors import bad_input

    if spec.resources.max_usd is None:
        return None
    return bad_input(f"resources.max_usd: {where} runs on machines gpujob does not rent, so nothing is priced; a "
                     "budget applies to the backends that rent (modal, vast): remove it, or choose one of those")


def usd(amount: float) -> str:
    """Dollars as a person reads them: cents, or four places below ten cents (a test's tiny budget)."""
    return f"{amount:.2f}" if amount >= 0.1 else f"{amount:.4f}"
