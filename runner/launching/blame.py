"""Which rank's failure ended a job, decided from facts, never from what a worker printed.

The facts: how each worker's process ended (its exit status, when, and whether gpujob, or srun
on SLURM, had sent it the signal it ended by), and the record a failing worker leaves: its rank,
when it failed, its exception's type and first line, whether it had joined the job, and whether
it failed because it lost a peer. That last one comes from what failed, not from its words: a
torch.distributed error type (DistBackendError, DistNetworkError, DistStoreError: NCCL, the
rendezvous, the store), or a collective that failed under it (gloo raises a bare RuntimeError:
runner.training.distributed notes the failed call).

Where the record goes is the launcher's to say: GPUJOB_ERROR_FILE, an unlinked file the local
launcher hands each worker (like torch elastic's TORCHELASTIC_ERROR_FILE), or else the job's
folder GPUJOB_JOB_DIR (the SLURM script's: the run's job/, which the nodes share).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

ERROR_FILE = "GPUJOB_ERROR_FILE"  # this worker's record: set by the local launcher
JOB_DIR = "GPUJOB_JOB_DIR"  # where every task's record goes, rank-N.error.json: set by the SLURM script
RECORD_GLOB = "rank-*.error.json"


def record_name(rank: int) -> str:
    return f"rank-{rank}.error.json"


@dataclass(frozen=True)
class ErrorRecord:
    """What a failing worker says of its own failure."""

    rank: int
    time: float  # wall clock (epoch s) when it caught the error
    type: str  # the exception's class, e.g. "ValueError", "torch.distributed.DistStoreError"
    message: str  # its first line
    lost_peer: bool  # failed because another rank died, hung or left
    joined: bool  # the rendezvous had completed: the job had started

    @classmethod
    def parse(cls, data: bytes) -> "ErrorRecord | None":
        """None for no record, or one cut short (its worker killed while writing it)."""
        try:
            fields = json.loads(data)
            return cls(int(fields["rank"]), float(fields["time"]), str(fields["type"]), str(fields["message"]),
                       bool(fields["lost_peer"]), bool(fields["joined"]))
        except (ValueError, KeyError, TypeError):
            return None


def leave_record(err: BaseException) -> None:
    """In a failing worker, before it exits: its record where its launcher asked for one."""
    path = os.environ.get(ERROR_FILE) or (os.environ.get(JOB_DIR) and
                                          str(Path(os.environ[JOB_DIR]) / record_name(_rank())))
    if not path:
        return  # a worker nobody launched: the error it raises is all there is
    from runner.training.distributed import GROUP

    said = (str(err).strip().splitlines() or [""])[0]
    record = {"rank": _rank(), "time": time.time(), "type": _type_name(err), "message": said,
              "lost_peer": GROUP.collective_failed or _distributed_error(err), "joined": GROUP.joined}
    try:
        with open(path, "w") as file:
            file.write(json.dumps(record))
    except OSError:
        pass  # a full or read-only disk: the exit status is still a fact


def read_records(folder: Path) -> dict[int, ErrorRecord]:
    """The records the tasks of a job left in `folder` (GPUJOB_JOB_DIR)."""
    records = {}
    for path in folder.glob(RECORD_GLOB):
        try:
            record = ErrorRecord.parse(path.read_bytes())
        except OSError:
            continue
        if record is not None:
            records[record.rank] = record
    return records


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _type_name(err: BaseException) -> str:
    kind = type(err)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _distributed_error(err: BaseException) -> bool:
    """Whether torch.distributed raised it (or the error it was raised from): the rendezvous,
    the store, NCCL. Not imported here: a worker that failed before torch was has no peer."""
    dist = sys.modules.get("torch.distributed")
    kind = getattr(dist, "DistError", None)
    seen = set()
    cause: BaseException | None = err
    while cause is not None and kind is not None and id(cause) not in seen:
        if isinstance(cause, kind):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


@dataclass(frozen=True)
class Ending:
    """How one rank's process ended, as its parent saw it."""

    rank: int
    code: int | None  # its exit status (negative: the signal that killed it); None: still running
    ended: float | None = None  # when (wall clock, epoch s); None: not known
    stopped: bool = False  # by the stop gpujob (or srun) sent it before it failed: a consequence
    record: ErrorRecord | None = None

    @property
    def failed(self) -> bool:
        """Ended badly by itself: an error, or a signal nobody in gpujob sent."""
        return self.code not in (0, None) and not self.stopped

    @property
    def lost_peer(self) -> bool:
        return self.record is not None and self.record.lost_peer

    @property
    def failed_at(self) -> float:
        """When its own failure happened: the moment it caught its error, else the moment its
        process was seen to end (a signal, a hard exit: no record)."""
        if self.record is not None:
            return self.record.time
        return self.ended if self.ended is not None else math.inf


def hung_ranks(endings: Iterable[Ending]) -> tuple[int, ...]:
    """The ranks still running when every rank that failed did so because it lost a peer:
    those stopped answering (stopped, stuck in a step), and the others gave up on them."""
    endings = list(endings)
    failed = [e for e in endings if e.failed]
    running = tuple(e.rank for e in endings if e.code is None)
    return running if failed and all(e.lost_peer for e in failed) else ()


def failed_ranks(endings: Iterable[Ending], hung: tuple[int, ...] = ()) -> list[int]:
    """The ranks to blame, the one whose failure ended the job first.

    First the ranks that failed by themselves (an error that is not a lost peer, a signal nobody
    in gpujob sent, an exit without a record), in the order they failed; then the `hung` ones
    (the others gave up waiting for them); then those that failed because they lost a peer, in
    the order they failed. Ranks gpujob or srun stopped are not among them: what they did then
    is a consequence."""
    failing = sorted((e for e in endings if e.failed and e.rank not in hung), key=lambda e: (e.failed_at, e.rank))
    return ([e.rank for e in failing if not e.lost_peer] + list(hung) +
            [e.rank for e in failing if e.lost_peer])
