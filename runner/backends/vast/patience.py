"""Patience with vast.ai: a multi-hour job makes hundreds of API calls, and any one of them may
time out, meet a 429 or a 5xx, lose its connection or get a reply of the wrong shape. Such a
failure is retried with backoff and reported as a warning; only an outage that lasts (minutes)
ends the job, as exit 3 naming what failed. Definite answers (a refused key, an unknown offer)
are never retried. Where a user waits for an answer (a dry run), each attempt is also bounded in
wall-clock time, so no call outlasts the patience, whatever the network does.

The loop is tenacity's, on the clock and sleep the backend is given (tests pass their own).
create_instance is the exception: it is not safe to repeat (two instances would bill), so the
rent is asked again only after looking the instance up by its label (rental.py).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from runner.backends.vast.api import VastUnavailable

if TYPE_CHECKING:
    from runner.backends.vast.api import VastService

OUTAGE_S = 600.0  # how long vast.ai may fail to answer before the job gives up
FIRST_DELAY_S, MAX_DELAY_S = 2.0, 60.0
NOT_RETRIED = ("create_instance",)


def patiently(clock: Callable[[], float], sleep: Callable[[float], None], outage_s: float, began: float, retry,
              before_sleep: Callable[[RetryCallState], None] | None,
              gave_up: Callable[[RetryCallState], object]) -> Retrying:
    """tenacity's loop as gpujob waits on vast.ai: what `retry` accepts is tried again after
    2 s, doubling to 60 s, until the next wait would end past `outage_s` from `began` (on
    `clock`); then `gave_up` says so (it raises)."""
    return Retrying(retry=retry, wait=wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S),
                    stop=lambda state: clock() - began + state.upcoming_sleep > outage_s,
                    sleep=lambda seconds: sleep(float(seconds)), before_sleep=before_sleep,
                    retry_error_callback=gave_up)


class PatientApi:
    """VastApi's methods, each retried while vast.ai fails transiently, for up to `outage_s` from
    the first attempt. With `attempt_s`, an attempt that has not ended after that many seconds
    (or the patience left) counts as failed. `quiet` keeps the retries' warnings back."""

    def __init__(self, api: "VastService", sleep: Callable[[float], None], clock: Callable[[], float],
                 outage_s: float = OUTAGE_S,
                 attempt_s: float | None = None, quiet: bool = False):
        self.api, self.sleep, self.clock, self.outage_s = api, sleep, clock, outage_s
        self.attempt_s, self.quiet = attempt_s, quiet

    def __getattr__(self, name: str):
        method = getattr(self.api, name)
        if name in NOT_RETRIED or not callable(method):
            return method
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def call(self, method, *args, **kwargs):
        began = self.clock()

        def gave_up(state: RetryCallState):
            waited = self.clock() - began
            raise VastUnavailable(f"{_failure(state).message}; vast.ai has not answered for "
                                  f"{_duration(waited)}; check https://status.vast.ai and your network, then try "
                                  "again") from None

        retrying = patiently(self.clock, self.sleep, self.outage_s, began, retry_if_exception_type(VastUnavailable),
                             None if self.quiet else _warn, gave_up)
        return retrying(self._attempt, method, began, args, kwargs)

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


def _warn(state: RetryCallState) -> None:
    print(f"gpujob: warning: {_failure(state).message}; trying again in {state.upcoming_sleep:.0f} s",
          file=sys.stderr)


def _failure(state: RetryCallState) -> VastUnavailable:
    """What the last attempt raised: tenacity calls back only after one failed, and only
    VastUnavailable is retried."""
    error = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(error, VastUnavailable), f"a retry after {error!r}, which is not retried"
    return error


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
