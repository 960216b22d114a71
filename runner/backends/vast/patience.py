"""Patience with vast.ai: a multi-hour job makes hundreds of API calls, and any one of them may
time out, meet a 429 or a 5xx, lose its connection or get a reply of the wrong shape. Such a
failure is retried with backoff and reported as a warning; only an outage that lasts (minutes)
ends the job, as exit 3 naming what failed. Definite answers (a refused key, an unknown offer)
are never retried. Where a user waits for an answer (a dry run), each attempt is also bounded in
wall-clock time, so no call outlasts the patience, whatever the network does.

create_instance is the exception: it is not safe to repeat (two instances would bill), so the
backend asks again only after looking the instance up by its label (runner/backends/vast/rental.py).
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

from runner.backends.vast.api import VastUnavailable

OUTAGE_S = 600.0  # how long vast.ai may fail to answer before the job gives up
FIRST_DELAY_S, MAX_DELAY_S = 2.0, 60.0
NOT_RETRIED = ("create_instance",)


class PatientApi:
    """VastApi's methods, each retried while vast.ai fails transiently, for up to `outage_s` from
    the first attempt. With `attempt_s`, an attempt that has not ended after that many seconds
    (or the patience left) counts as failed. `quiet` keeps the retries' warnings back."""

    def __init__(self, api, sleep: Callable[[float], None], clock: Callable[[], float], outage_s: float = OUTAGE_S,
                 attempt_s: float | None = None, quiet: bool = False):
        self.api, self.sleep, self.clock, self.outage_s = api, sleep, clock, outage_s
        self.attempt_s, self.quiet = attempt_s, quiet

    def __getattr__(self, name: str):
        method = getattr(self.api, name)
        if name in NOT_RETRIED or not callable(method):
            return method
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def call(self, method, *args, **kwargs):
        began, delay = self.clock(), FIRST_DELAY_S
        while True:
            try:
                return self._attempt(method, began, args, kwargs)
            except VastUnavailable as err:
                waited = self.clock() - began
                if waited + delay > self.outage_s:
                    raise VastUnavailable(f"{err.message}; vast.ai has not answered for {_duration(waited)}; check "
                                          "https://status.vast.ai and your network, then try again") from None
                if not self.quiet:
                    print(f"gpujob: warning: {err.message}; trying again in {delay:.0f} s", file=sys.stderr)
                self.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)

    def _attempt(self, method, began: float, args, kwargs):
        if self.attempt_s is None:
            return method(*args, **kwargs)
        limit = max(0.0, min(self.attempt_s, self.outage_s - (self.clock() - began)))
        result: dict = {}

        def run():
            try:
                result["value"] = method(*args, **kwargs)
            except BaseException as err:  # handed to the caller's thread
                result["error"] = err

        # A daemon thread: one that never returns (a resolver that hangs, a reply sent a byte a
        # minute) is left behind, and never keeps gpujob from exiting.
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            what = getattr(method, "__name__", "a call").replace("_", " ")
            raise VastUnavailable(f"vast: {what}: vast.ai did not answer within {limit:.0f} s")
        if "error" in result:
            raise result["error"]
        return result["value"]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
