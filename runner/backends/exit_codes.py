"""What a remote `gpujob run` exit code means to the user on this machine.

Backends that run the worker somewhere else (a container, a rented instance) see only its exit
code and the last lines it printed; this turns them into the same GpujobError a local run raises.
"""

from __future__ import annotations

import re
from pathlib import Path

from runner.errors import BAD_INPUT, JOB_FAILED, GpujobError, last_error_line
from runner.invocation import command
from runner.errors import BUDGET_REACHED, INTERRUPTED, PREEMPTED

TAIL_LINES = 12


def remote_exit_error(code: int, lines: list[str], where: str, run_dir: Path) -> GpujobError | None:
    """None for success; otherwise the error to raise for `gpujob run` ending with `code`."""
    if code == 0:
        return None
    if code == BAD_INPUT:
        return GpujobError(f"{where}: {last_error_line(lines)}", BAD_INPUT)
    if code == BUDGET_REACHED:  # its own line, with the folder here in place of the remote one
        said = re.sub(r"gpujob resume \S+", f"gpujob resume {run_dir}", last_error_line(lines))
        return GpujobError(f"{where}: {said}", BUDGET_REACHED)
    if code in (PREEMPTED, INTERRUPTED):
        return GpujobError(f"{where}: the job was stopped and saved a checkpoint; its run folder is {run_dir}; "
                           f"continue it with: {command(f'gpujob resume {run_dir}')}", code)
    tail = "\n  ".join(line for line in lines[-TAIL_LINES:])
    return GpujobError(f"{where}: the job failed (exit {code}): {last_error_line(lines)}\n"
                       f"last lines of its output:\n  {tail}", JOB_FAILED)
