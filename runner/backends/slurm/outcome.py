"""How a SLURM job ended, from what its batch script left in the run's job/ (script.py) and
srun's own lines in its output: which rank's failure ended it, whether its time limit did, and
whether the exit code there is this start's (a requeued job starts again).

With `srun --kill-on-bad-exit`, the first rank to end badly makes srun stop all the others
(SIGTERM, then SIGKILL after the cluster's KillWait): what they then do or say is a consequence.
So the rank to blame is the one whose own failure came first in time, as each task's shell
recorded the moment its worker ended and each failing worker its error (runner/launching/blame.py:
rank-N.error.json in job/, with whether it only lost a peer); neither the rank numbers, nor the
order in which the files or lines appear, nor what a rank said decide it.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from runner.backends.slurm.commands import OutputFollower
from runner.launching.blame import Ending, ErrorRecord, failed_ranks, read_records
from runner.backends.slurm.script import EXIT_CODE_FILE, TIME_LIMIT_SIGNAL
from runner.errors import JOB_FAILED, last_error_line
from runner.errors import INTERRUPTED, PREEMPTED

# srun's own line for a task that ended badly, e.g. "srun: error: node2: task 1: Killed".
SRUN_TASK_ENDED = re.compile(r"^srun: error: (\S+): tasks? ([\d,-]+): (.+)$")
# The worker's own words when the time limit stopped it (runner/worker.py).
TIME_LIMIT_SAID = "ran past resources.timeout_minutes"


@dataclass(frozen=True)
class RankEnd:
    """How one rank's worker ended: its exit code as its task's shell saw it, its node, when it
    ended (epoch seconds; None where its shell died with it), the signals its task was sent
    (TERM, INT, ALRM: a stop, srun's teardown, the time limit), its last lines and the error
    record it left, if it failed by an error."""

    rank: int
    code: int
    node: str | None
    ended: float | None = None
    signals: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    record: ErrorRecord | None = None

    @property
    def signal(self) -> str | None:
        """The signal that killed its worker ("SIGKILL"), unless its task was sent that one
        (gpujob's stop, srun's teardown, the time limit) or it is one of gpujob's own exits."""
        if self.code in (0, PREEMPTED, INTERRUPTED) or not 128 < self.code < 128 + signal.NSIG:
            return None
        try:
            name = signal.Signals(self.code - 128).name
        except ValueError:
            return None
        return None if name.removeprefix("SIG") in self.signals else name

    @property
    def stopped(self) -> bool:
        """Ended as it was asked to (a stop, srun's teardown), not by a failure of its own. A
        negative code: a task whose shell srun killed after the failure that ended the job."""
        return self.code < 0 or self.code in (PREEMPTED, INTERRUPTED) or (self.code > 128 and self.signal is None)

    @property
    def stopped_by_time_limit(self) -> bool:
        return TIME_LIMIT_SIGNAL in self.signals and (
            self.code == 128 + signal.SIGALRM or (self.code == JOB_FAILED and TIME_LIMIT_SAID in last_error_line(
                list(self.lines))))


def rank_ends(job_dir: Path, output: OutputFollower) -> dict[int, RankEnd]:
    """Every rank that ended, from the line each task's shell wrote (rank-N.exit), and, for a
    task whose shell died with its worker (its node lost, its process group killed), from srun's
    own line. Of those, only the first srun reports can have ended the job: srun stopped the
    ones after it, and they count as stopped by srun (-SIGKILL)."""
    ends, records = {}, read_records(job_dir)
    for path in job_dir.glob("rank-*.exit"):
        rank = int(path.stem.removeprefix("rank-"))
        ends[rank] = _parse_rank_line(rank, path.read_text(), output.lines(rank), records.get(rank))
    first = True
    for line in output.unlabelled():
        match = SRUN_TASK_ENDED.match(line)
        if not match:
            continue
        how = match[3]
        code = (int(how.rsplit(" ", 1)[-1]) if how.startswith("Exited with exit code") else
                128 + signal.SIGKILL if how.startswith("Killed") else PREEMPTED)
        for rank in _task_ids(match[2]):
            if rank not in ends:
                ends[rank] = RankEnd(rank, code if first else -signal.SIGKILL, match[1],
                                     ended=-math.inf if first else None, lines=tuple(output.lines(rank)),
                                     record=records.get(rank))
        first = False
    return ends


def _parse_rank_line(rank: int, text: str, lines: list[str], record: ErrorRecord | None) -> RankEnd:
    """"CODE NODE ENDED SIGNALS" (script.py's TASK); "CODE NODE" and "CODE" from older scripts
    (a resumed run submits the script it was first given)."""
    code, node, ended, got = (text.split() + [None] * 4)[:4]
    assert code is not None, f"rank {rank}'s exit file is empty; its shell writes the line in one echo"
    seconds = float(ended.replace(",", ".")) if ended else None  # EPOCHREALTIME follows the locale's decimal point
    signals = tuple(name for name in (got or "").split(",") if name and name != "-")
    return RankEnd(rank, int(code), node, seconds, signals, tuple(lines), record)


def _task_ids(listed: str) -> list[int]:
    """srun's task list, "1" or "0-1,3", as ranks."""
    ids: list[int] = []
    for part in listed.split(","):
        low, _, high = part.partition("-")
        ids += range(int(low), int(high or low) + 1)
    return ids


def failed_rank(ends: dict[int, RankEnd]) -> RankEnd | None:
    """The rank whose failure ended the job, if one failed: of those that failed by themselves
    (an error, or a signal their task was not sent), the one that failed first, unless its
    record says it only lost a peer and another's does not (runner.launching.blame.failed_ranks)."""
    order = failed_ranks(Ending(end.rank, end.code, end.ended, end.stopped, end.record) for end in ends.values())
    return ends[order[0]] if order else None


@dataclass(frozen=True)
class ScriptExit:
    """The batch script's last line: srun's exit code, and which start of the job wrote it."""

    code: int
    attempt: int | None  # SLURM_RESTART_COUNT; None from scripts older than this field


def script_exit(job_dir: Path) -> ScriptExit | None:
    path = job_dir / EXIT_CODE_FILE
    words = path.read_text().split() if path.exists() else []
    if not words:
        return None
    return ScriptExit(int(words[0]), int(words[1]) if len(words) > 1 else None)
