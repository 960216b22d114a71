"""What the run has cost so far, seen from inside the job: a rented backend tells its worker the
price, when this attempt's billing began and what earlier attempts cost (the basis of cost.json);
the worker adds the time since. On the user's own hardware nothing is priced (None)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

PRICE = "GPUJOB_USD_PER_HOUR"  # what the backend rents, per hour
BILLED_SINCE = "GPUJOB_BILLED_SINCE"  # Unix time this attempt's billing began (start-up included)
SPENT_BEFORE = "GPUJOB_SPENT_BEFORE_USD"  # earlier attempts of the same run
MAX_USD = "GPUJOB_MAX_USD"  # resources.max_usd, the run's budget across its attempts


@dataclass(frozen=True)
class Meter:
    usd_per_hour: float
    billed_since: float
    spent_before_usd: float = 0.0
    max_usd: float | None = None

    def spent(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return self.spent_before_usd + self.usd_per_hour * max(now - self.billed_since, 0.0) / 3600

    def usd_for(self, seconds: float) -> float:
        return self.usd_per_hour * seconds / 3600

    def env(self) -> dict[str, str]:
        """What a backend sets in the job's environment for `from_env` to read there."""
        said = {PRICE: repr(self.usd_per_hour), BILLED_SINCE: repr(self.billed_since),
                SPENT_BEFORE: repr(self.spent_before_usd)}
        return {**said, MAX_USD: repr(self.max_usd)} if self.max_usd is not None else said


def from_env(environ: Mapping[str, str] = os.environ) -> Meter | None:
    """The meter a rented backend set up; None where nothing is priced."""
    if not environ.get(PRICE):
        return None
    max_usd = environ.get(MAX_USD)
    return Meter(float(environ[PRICE]), float(environ.get(BILLED_SINCE) or time.time()),
                 float(environ.get(SPENT_BEFORE) or 0.0), float(max_usd) if max_usd else None)
