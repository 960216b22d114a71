"""SIGTERM and SIGINT as requests to stop at the next step boundary.

Modal, vast.ai and SLURM all preempt by sending SIGTERM and waiting a grace period; a
user presses Ctrl-C. Either way the training loop finishes its step, writes a
checkpoint and exits with PREEMPTED (143), which backends read as "resume me".
"""

from __future__ import annotations

import signal
import threading

PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a SIGTERM death
INTERRUPTED = 130  # 128 + SIGINT


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
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
    def exit_code(self) -> int:
        return INTERRUPTED if self.signum == signal.SIGINT else PREEMPTED
