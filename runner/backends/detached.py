"""A command that outlives the terminal that started it (`--detach` on local and docker), and
reading what such a command leaves in the run folder's job/: its output and its exit code.

The command runs in its own session (no terminal, so no SIGHUP when the terminal closes) under
a small sh wrapper that writes the command's exit code to job/exit-code when it ends. The
wrapper traps TERM and INT with a no-op, not an ignore, so the command still receives them
(`gpujob cancel`) and the exit code is still written after it has checkpointed.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

from runner.runs.paths import JOB_EXIT_CODE, JOB_OUTPUT

_WRAPPER = 'trap : TERM INT HUP; "$@"; code=$?; echo $code > "$0"; exit $code'


def start_detached(command: list[str], job_dir: Path, env: dict | None = None) -> int:
    """Start `command` in its own session, its output to job_dir/output.log (appended, so a
    resumed run's log goes on) and its exit code to job_dir/exit-code. Returns the pid of the
    session's leader, which is also its process group."""
    job_dir.mkdir(parents=True, exist_ok=True)
    exit_file = job_dir / JOB_EXIT_CODE
    exit_file.unlink(missing_ok=True)
    with open(job_dir / JOB_OUTPUT, "ab") as output:
        proc = subprocess.Popen(["sh", "-c", _WRAPPER, str(exit_file), *command], stdin=subprocess.DEVNULL,
                                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"})
    return proc.pid  # not waited for: subprocess reaps it if this process outlives it


def exit_code(job_dir: Path) -> int | None:
    """The detached command's exit code, None while it runs (or if it was never started)."""
    try:
        return int((job_dir / JOB_EXIT_CODE).read_text().strip())
    except (OSError, ValueError):
        return None


def tail_lines(path: Path, live: Callable[[], bool] | None = None, poll_s: float = 0.5,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """The lines of `path`; with `live`, then the lines it gains for as long as live() says the
    job runs, and whatever it gained in between after that."""
    offset, partial = 0, b""
    while True:
        still_live = live() if live is not None else False
        if path.exists():
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if not still_live:
            if partial:
                yield partial.decode(errors="replace")
            return
        sleep(poll_s)
