"""Ctrl-C held back across a step that must not be cut in two: a job started elsewhere (a Modal
call spawned, a vast.ai instance rented) and its id written into the run record. Interrupted
in between, gpujob would leave a remote job running, or billing, that no run folder names."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable


@contextmanager
def held_interrupts(on_interrupt: Callable[[], None] | None = None):
    """Hold Ctrl-C (SIGINT) back for the duration; `interrupted` says whether one came. Each
    held Ctrl-C calls `on_interrupt` (to tell the user why nothing happens yet)."""

    class Held:
        interrupted = False

    held = Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum, frame):
        held.interrupted = True
        if on_interrupt is not None:
            on_interrupt()

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)
