"""The one error type users can cause, carrying the exit code the CLI returns.

Exit codes are a contract: 0 done, 1 the job itself failed, 2 bad spec or usage,
3 a backend, credential or engine is missing, 4 the run's budget (resources.max_usd) was reached,
130 interrupted and 143 preempted (these three stopped with a checkpoint: `gpujob resume`
continues). Everything that can go wrong because
of what the user typed or has installed is raised as a GpujobError and printed once,
without a traceback, at the CLI edge.
"""

from __future__ import annotations

import re
from pathlib import Path

JOB_FAILED = 1
BAD_INPUT = 2
MISSING_BACKEND = 3
BUDGET_REACHED = 4  # stopped with a checkpoint before resources.max_usd would pass
INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C (or SIGHUP), after a checkpoint
PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a SIGTERM death: "preempted, resume me"


class GpujobError(Exception):
    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.run_dir: Path | None = None  # the run folder the failure left, printed last (for scripts)


def bad_input(message: str) -> GpujobError:
    return GpujobError(message, BAD_INPUT)


def missing_backend(message: str) -> GpujobError:
    return GpujobError(message, MISSING_BACKEND)


def job_failed(message: str) -> GpujobError:
    return GpujobError(message, JOB_FAILED)


def error_first_line(err: BaseException, max_chars: int | None = None) -> str:
    """What an exception says, in one line (at most `max_chars`): its first line, or its type's
    name when it says nothing (a service's bare timeout)."""
    text = str(err).strip()
    return text.splitlines()[0][:max_chars] if text else type(err).__name__


# A traceback's own error line: `ValueError: ...`, `torch.distributed.DistBackendError: ...`,
# `KeyboardInterrupt`. Not its frames (indented) nor the `At:` lines torch adds below some errors.
ERROR_LINE = re.compile(r"^\w+(\.\w+)*(Error|Exception|Interrupt)\b")


def last_error_line(lines: list[str]) -> str:
    """From a worker's output, its own one-line error (the `gpujob: ...` the CLI prints) if it
    printed one, else the error line of its last traceback, else its last line: how a launcher
    or backend reports a worker's failure."""
    mine = [line.removeprefix("gpujob: ") for line in lines if line.startswith("gpujob: ")]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    return (mine or errors or [line for line in lines if line.strip()] or [""])[-1].strip()
