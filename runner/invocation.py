"""How the user started gpujob, so that every command gpujob prints for them to run (`gpujob
resume RUN`, `modal token new`, `vastai set api-key KEY`) is one they can type as it stands.

Under `uv run` the console scripts are on PATH only inside uv's environment: a user who typed
`uv run gpujob ...` and is told `gpujob logs RUN` gets `bash: gpujob: command not found`, so
they are told `uv run gpujob logs RUN`. The gpujob the user started decides once and leaves its
answer in the environment, where the processes it starts (workers, a detached run) find it.
Imports nothing of runner: every layer prints hints."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Mapping

INVOKED_AS = "GPUJOB_INVOKED_AS"  # what goes before a printed command ("uv run", or "" for none)
UV_RUN = "UV_RUN_RECURSION_DEPTH"  # set by `uv run` (not by uv's other commands) for what it runs
PROGRAMS = ("gpujob", "modal", "vastai")  # the console scripts whose commands gpujob prints
_QUOTED = re.compile(r"`((?:%s) [^`]*)`" % "|".join(PROGRAMS))


def detected(argv0: str, environ: Mapping[str, str]) -> str:
    """The prefix for a process started as `argv0` with `environ`: "uv run" for the gpujob
    script of the environment `uv run` set up (VIRTUAL_ENV), else none (a gpujob installed
    with `uv tool install`, even when started from under `uv run`; `python -m runner.cli`; a test)."""
    script = Path(argv0)
    if script.name != "gpujob" or not environ.get(UV_RUN):
        return ""
    venv = environ.get("VIRTUAL_ENV")
    in_uvs_environment = venv is None or script.parent.resolve() == (Path(venv) / "bin").resolve()
    return "uv run" if in_uvs_environment else ""


def remember() -> None:
    """Decide for this process and the ones it starts (the first gpujob's answer stands)."""
    os.environ.setdefault(INVOKED_AS, detected(sys.argv[0], os.environ))


def command(text: str) -> str:
    """`text` ("gpujob resume runs/x") as this user can run it ("uv run gpujob resume runs/x")."""
    prefix = os.environ.get(INVOKED_AS)
    if prefix is None:
        prefix = detected(sys.argv[0], os.environ)
    return f"{prefix} {text}" if prefix else text


def commands_in(message: str) -> str:
    """A message with each `quoted` command of gpujob, modal or vastai as this user can run it."""
    return _QUOTED.sub(lambda found: f"`{command(found.group(1))}`", message)
