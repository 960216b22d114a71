"""SIGTERM and SIGINT as requests to stop at the next step boundary.

Modal, vast.ai and SLURM all preempt by sending SIGTERM and waiting a grace period; a
user presses Ctrl-C; a closed terminal sends SIGHUP. Either way the training loop finishes
its step, writes a checkpoint and exits with PREEMPTED (143) or INTERRUPTED (130), which
backends read as "resume me". `resources.timeout_minutes` stops a run the same way (SIGALRM),
and that is a failure (exit 1) with a checkpoint to resume from.
"""

from __future__ import annotations

import signal
import threading

from runner.errors import INTERRUPTED, PREEMPTED


class StopRequest:
    """With `timeout_s`, the time limit is a stop request too: SIGALRM when it passes."""

    def __init__(self, timeout_s: float | None = None):
        self.signum: int | None = None
        self.timeout_s = timeout_s
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
                self._previous[signum] = signal.signal(signum, self._handle)
            if self.timeout_s is not None:
                signal.setitimer(signal.ITIMER_REAL, max(self.timeout_s, 0.001))
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        if self.timeout_s is not None and self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Stopped(Exception):
    """Raised out of the training loop after a checkpoint was written for a stop request."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step

    @property
    def timed_out(self) -> bool:
        return self.signum == signal.SIGALRM

    @property
    def exit_code(self) -> int:
        if self.timed_out:
            return 1  # the job failed to finish in its time: a failure, though it checkpointed
        return INTERRUPTED if self.signum == signal.SIGINT else PREEMPTED
