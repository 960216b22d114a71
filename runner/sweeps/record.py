"""sweep.json: everything a sweep is and has done, enough to rebuild it: the spec as written, the
axes, the sampler and its seed, how trials are judged, and each trial's folder, values, state
(running, finished, pruned, failed, cancelled), epochs, metric per epoch and result.

Written atomically, and only under the sweep's own lock (.sweep.lock, flock), since the workers of
a parallel sweep each update it as their trials start and end.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from runner.errors import bad_input
from runner.runs.files import atomic_write

SWEEP_JSON, JOURNAL, BEST, PLOT, TABLE = "sweep.json", "optuna.journal", "best.yaml", "sweep.png", "table.txt"
LOCK = ".sweep.lock"
FORMAT = 1
RUNNING, FINISHED, PRUNED, FAILED, CANCELLED = "running", "finished", "pruned", "failed", "cancelled"
ENDED = (FINISHED, PRUNED, FAILED)  # a trial in one of these is never run again


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class TrialRecord:
    number: int  # Optuna's trial number, and the trial's place in the sweep
    folder: str  # its run folder, inside the sweep folder
    params: dict
    state: str = RUNNING
    epochs: int | None = None  # epochs done; for a pruned trial, the epoch it was stopped at
    value: float | None = None  # the metric at its end
    curve: list = field(default_factory=list)  # the metric after each epoch
    detail: str = ""
    owner: dict | None = None  # the process that runs it (runner.runs.lock.identity)
    started_at: str = field(default_factory=now)
    ended_at: str | None = None
    wall_s: float | None = None


@dataclass
class SweepRecord:
    name: str
    spec_path: str
    base: dict  # the spec as written (with --set applied), without its sweep section
    axes: list  # Axis.to_json() each
    sampler: str  # grid | random | tpe
    planned: int  # how many trials the sweep runs
    seed: int
    metric: str
    goal: str
    pruner: str
    max_parallel: int
    max_usd: float | None
    backend: str = "local"
    handles: dict = field(default_factory=dict)  # where the backend fanned the trials out (a SLURM array's id)
    state: str = RUNNING  # running | finished | cancelled | failed
    created_at: str = field(default_factory=now)
    trials: list = field(default_factory=list)  # TrialRecord each
    events: list = field(default_factory=list)  # [{"at", "event"}]: started, resumed, cancel asked, ...
    format: int = FORMAT

    def note(self, event: str, **detail) -> None:
        self.events.append({"at": now(), "event": event, **detail})

    def trial(self, number: int) -> TrialRecord:
        return next(t for t in self.trials if t.number == number)

    @property
    def cancel_asked(self) -> bool:
        for event in reversed(self.events):
            if event["event"] == "cancel asked":
                return True
            if event["event"] in ("started", "resumed"):
                return False
        return False


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / SWEEP_JSON).is_file()


def write(folder: Path, record: SweepRecord) -> None:
    atomic_write(Path(folder) / SWEEP_JSON, (json.dumps(asdict(record), indent=2) + "\n").encode())


def read(folder: Path) -> SweepRecord:
    """The sweep's record; exit 2 naming the folder when it is not a sweep or the record is damaged."""
    folder = Path(folder)
    path = folder / SWEEP_JSON
    if not path.is_file():
        what = "no such sweep folder" if not folder.is_dir() else f"not a gpujob sweep (no {SWEEP_JSON})"
        raise bad_input(f"{folder}: {what}")
    try:
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in SweepRecord.__dataclass_fields__}
        record = SweepRecord(**known)
        record.trials = [TrialRecord(**{k: v for k, v in t.items() if k in TrialRecord.__dataclass_fields__})
                         for t in record.trials]
        return record
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise bad_input(f"{path}: damaged sweep record ({err}); gpujob will not act on this sweep") from None


@contextmanager
def updating(folder: Path) -> Iterator[SweepRecord]:
    """The record, read under the sweep's lock and written back when the block ends without error."""
    fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held briefly by each writer: waiting is right
        record = read(folder)
        yield record
        write(folder, record)
    finally:
        os.close(fd)  # closing drops the flock
