"""Ctrl-C ends the `gpujob` command with one line and exit 130, whenever it comes.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread is. Before a
command runs (Python importing typer, torch and the rest, typer parsing the arguments) typer
then prints a traceback; in the middle of an import it leaves a module half made, and what
touches it next fails with another error (numpy: a RecursionError); after the command, at
shutdown, the process dies by the signal without a word. So this handler:

- outside a command, where nothing has been started that needs undoing: exits at once;
- inside one (`inside_a_command`), raises KeyboardInterrupt as Python would, so that the
  command's own clean-up runs (a half-made run folder, a rental), but never in the middle of an
  import: there it is raised as soon as the import is done;
- on a second Ctrl-C while the first waits for an import: exits at once.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

EXIT_CODE = 130  # 128 + SIGINT, as shells report it
LINE = b"gpujob: interrupted\n"
IMPORT_POLL_S = 0.02


class _State:
    in_command = False
    waiting = False  # a Ctrl-C that came during an import, to be raised once it is done
    redelivering = False


def install_if_this_is_gpujob() -> None:
    """Install the handler where this process is the `gpujob` command (its console script, or
    `python -m runner.cli`), never where gpujob is imported as a library (tests, a notebook) nor
    in a process multiprocessing spawned from it (which runs the parent's main module again, as
    `__mp_main__`, before its own code: a DataLoader worker's Ctrl-C is its parent's to handle)."""
    main, spawned_as = sys.modules.get("__main__"), sys.modules.get("__mp_main__")
    if spawned_as is not None and spawned_as is not main:
        return
    if getattr(getattr(main, "__spec__", None), "name", None) in ("runner.cli", "runner.cli.__main__") or Path(sys.argv[0]).name == "gpujob":
        install()


def install() -> None:
    signal.signal(signal.SIGINT, _on_sigint)


@contextmanager
def inside_a_command():
    """While a command runs, Ctrl-C is a KeyboardInterrupt its code can clean up after."""
    before = _State.in_command
    _State.in_command = True
    try:
        yield
    finally:
        _State.in_command = before


def _on_sigint(signum, frame) -> None:
    if not _State.in_command:
        _exit_now()
    if _State.redelivering:
        _State.redelivering = False
    elif _State.waiting:
        _exit_now()  # a second Ctrl-C while the first waits for an import to end
    if _importing(frame):
        _State.waiting = True
        threading.Thread(target=_redeliver_after_imports, args=(threading.main_thread().ident,), daemon=True,
                         name="gpujob-ctrl-c").start()
        return
    _State.waiting = False
    raise KeyboardInterrupt


def _redeliver_after_imports(main_thread: int) -> None:
    while _importing(sys._current_frames().get(main_thread)):
        time.sleep(IMPORT_POLL_S)
    _State.redelivering = True
    _thread.interrupt_main(signal.SIGINT)  # the handler runs again in the main thread, out of the import


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # what the command already printed comes out first
        except (OSError, ValueError, RuntimeError):  # closed, or a write this very signal cut short
            pass
    os.write(2, LINE)
    os._exit(EXIT_CODE)
