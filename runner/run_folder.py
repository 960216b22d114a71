"""The run folder: what every run hands back, whatever backend ran it.

spec.yaml, metrics.jsonl, summary.json, timing.json, loss_curve.png, env.json.
Key names are a contract other tools read: add keys, rename none. A new folder is
created exclusively (never reusing an earlier run's), and every whole-file write goes
through a temp file and a rename, so a killed run never leaves a half-written JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePath
from typing import Iterable

from runner.errors import bad_input

SPEC, METRICS, SUMMARY, TIMING, PLOT, ENV = (
    "spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json")
JOB_FILES = "job"  # what a backend submitted to start the run (batch script, scheduler log)
# mkstemp makes 0600 files; run folders are read by the user's other tools and, on a cluster,
# by the submitting user from other machines: give whole-file writes the usual umask'd mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


_TEMP_SUFFIX = ".tmp"


def is_interrupted_write(path: PurePath) -> bool:
    """A temp file of atomic_write's that a kill left behind: never part of a run."""
    return path.name.startswith(".") and path.name.endswith(_TEMP_SUFFIX)


def remove_interrupted_writes(folder: Path) -> None:
    for path in folder.iterdir() if folder.is_dir() else []:
        if is_interrupted_write(path):
            path.unlink(missing_ok=True)


def atomic_write(path: Path, *parts: bytes) -> None:
    """Write `parts` one after another to `path` through a temp file, fsync and rename."""
    atomic_write_chunks(path, parts)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """atomic_write for data that arrives in chunks (a download): never all in memory at once."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, runs_dir: str | Path, name: str) -> "RunFolder":
        """A new folder `runs_dir/NAME-YYYYmmdd-HHMMSS[-N]`; never one that exists."""
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for attempt in range(1, 1000):
            path = runs_dir / (stem if attempt == 1 else f"{stem}-{attempt}")
            try:
                path.mkdir()  # exclusive: fails if another run took this name
                return cls(path)
            except FileExistsError:
                continue
        raise bad_input(f"--runs-dir: no free run folder name under {runs_dir}")

    @classmethod
    def at(cls, path: str | Path) -> "RunFolder":
        """A folder named by the caller (remote backends pick it); it must be new, or hold
        nothing but the JOB_FILES a backend put there to start the job (e.g. a batch script)
        and the temp files of a start that was killed before it wrote the spec."""
        path = Path(path)
        if path.exists() and any(p.name != JOB_FILES and not is_interrupted_write(p) for p in path.iterdir()):
            raise bad_input(f"--run-dir: {path} already holds a run; it is never overwritten")
        path.mkdir(parents=True, exist_ok=True)
        remove_interrupted_writes(path)
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> "RunFolder":
        """A run folder written before, to resume into."""
        path = Path(path)
        if not (path / SPEC).is_file():
            raise bad_input(f"{path}: not a gpujob run folder (no {SPEC})")
        return cls(path)

    @property
    def finished(self) -> bool:
        return self.file(SUMMARY).exists()

    def keep_metrics(self, count: int) -> None:
        """Cut metrics.jsonl back to its first `count` records: the ones a checkpoint
        includes. The steps after it are trained again and their lines written again."""
        kept = self.metrics()[:count]
        self.write_text(METRICS, "".join(json.dumps(r) + "\n" for r in kept))

    def discard(self) -> None:
        """Remove a folder this process created and wrote only its own files to."""
        for name in (SPEC, METRICS, SUMMARY, TIMING, PLOT, ENV):
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.file("checkpoints"), ignore_errors=True)
        try:
            self.path.rmdir()
        except OSError:
            pass  # something else is in it: leave it alone

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.file(name), text.encode())

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2, default=str) + "\n")

    def read_json(self, name: str):
        return json.loads(self.file(name).read_text())

    def append_metric(self, record: dict) -> None:
        # One whole line per write and flush: a kill loses at most the line being written.
        with open(self.file(METRICS), "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        path = self.file(METRICS)
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything before it is whole
        return records


class MetricsListener:
    """Writes each step and epoch record to metrics.jsonl as it happens."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def on_start(self, plan: dict) -> None:
        pass

    def on_step(self, record: dict) -> None:
        self.folder.append_metric(record)

    def on_epoch(self, record: dict) -> None:
        self.folder.append_metric(record)
