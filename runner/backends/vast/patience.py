"""Patience with vast.ai: a multi-hour job makes hundreds of API calls, and any one of them may
time out, meet a 429 or a 5xx, lose its connection or get a reply of the wrong shape. Such a
failure is retried with backoff and reported as a warning; only an outage that lasts (minutes)
ends the job, as exit 3 naming what failed. Definite answers (a refused key, an unknown offer)
are never retried.

create_instance is the exception: it is not safe to repeat (two instances would bill), so the
backend retries it only after looking the instance up by its label (runner/backends/vast/backend.py).
"""

from __future__ import annotations

import sys
from typing import Callable

from runner.backends.vast.api import VastUnavailable

OUTAGE_S = 600.0  # how long vast.ai may fail to answer before the job gives up
FIRST_DELAY_S, MAX_DELAY_S = 2.0, 60.0
NOT_RETRIED = ("create_instance",)


class PatientApi:
    """VastApi's methods, each retried while vast.ai fails transiently, for up to `outage_s`."""

    def __init__(self, api, sleep: Callable[[float], None], clock: Callable[[], float], outage_s: float = OUTAGE_S):
        self.api, self.sleep, self.clock, self.outage_s = api, sleep, clock, outage_s

    def __getattr__(self, name: str):
        method = getattr(self.api, name)
        if name in NOT_RETRIED or not callable(method):
            return method
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def call(self, method, *args, **kwargs):
        began, delay = None, FIRST_DELAY_S
        while True:
            try:
                return method(*args, **kwargs)
            except VastUnavailable as err:
                now = self.clock()
                began = now if began is None else began
                if now - began + delay > self.outage_s:
                    raise VastUnavailable(f"{err.message}; vast.ai has not answered for "
                                          f"{(now - began) / 60:.1f} min; check https://status.vast.ai and your "
                                          "network, then try again") from None
                print(f"gpujob: warning: {err.message}; trying again in {delay:.0f} s", file=sys.stderr)
                self.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
