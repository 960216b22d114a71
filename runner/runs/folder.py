"""The run folder: what every run hands back, whatever backend ran it.

spec.yaml, metrics.jsonl, summary.json, timing.json, loss_curve.png, env.json.
Key names are a contract other tools read: add keys, rename none. A new folder is
created exclusively (never reusing an earlier run's), and every whole-file write goes
through a temp file and a rename, so a killed run never leaves a half-written JSON.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import bad_input
from runner.invocation import command
from runner.runs import record as run_record
from runner.runs.files import atomic_write, is_interrupted_write, remove_interrupted_writes
from runner.runs.reading import whole_summary
from runner.runs.paths import (ENV, ERROR_LOG, METRICS, PLOT, PRE_RUN, SPEC, TIMING, RunPaths)

if TYPE_CHECKING:
    from runner.runs.record import Submission


def _make_parent(path: Path) -> None:
    """mkdir -p, with one line naming the path when it cannot be made."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise bad_input(f"--runs-dir: {path} is a file, not a folder") from None
    except NotADirectoryError:
        raise bad_input(f"--runs-dir: {path} is under a file, not a folder") from None
    except OSError as err:
        raise bad_input(f"--runs-dir: cannot create {path}: {err.strerror}") from None


class RunFolder:
    def __init__(self, path: Path, made_here: bool = False):
        self.path = Path(path)
        self.made_here = made_here  # this process made the folder: it may take it away again

    @staticmethod
    def free_name(runs_dir: str | Path, name: str) -> str:
        """`NAME-YYYYmmdd-HHMMSS[-N]`, not yet taken under runs_dir (a backend's plan names its
        run before anything is made, so that --dry-run shows the very request submit sends)."""
        stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for attempt in range(1, 1000):
            candidate = stem if attempt == 1 else f"{stem}-{attempt}"
            if not (Path(runs_dir) / candidate).exists():
                return candidate
        raise bad_input(f"--runs-dir: no free run folder name under {runs_dir}")

    @classmethod
    def start(cls, path: str | Path, submission: "Submission") -> "RunFolder":
        """Make the run folder `path` (it must not exist) with its submission record first,
        before anything else: a folder becomes a run only this way. FileExistsError if taken."""
        path = Path(path)
        _make_parent(path.parent)
        try:
            path.mkdir()  # exclusive: never an earlier run's folder
        except FileExistsError:
            raise
        except OSError as err:
            raise bad_input(f"--runs-dir: cannot create {path}: {err.strerror}") from None
        try:
            run_record.write(path, submission)
        except BaseException:  # Ctrl-C or a full disk in between: no folder that is not a run is left
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, made_here=True)

    @classmethod
    def create(cls, runs_dir: str | Path, name: str, backend: str = "local") -> "RunFolder":
        """A new folder `runs_dir/NAME-YYYYmmdd-HHMMSS[-N]`; never one that exists."""
        for _ in range(1000):
            run_name = cls.free_name(runs_dir, name)
            try:
                return cls.start(Path(runs_dir) / run_name, run_record.new_submission(backend, run_name))
            except FileExistsError:
                continue  # another run took the name in between
        raise bad_input(f"--runs-dir: no free run folder name under {runs_dir}")

    @classmethod
    def at(cls, path: str | Path) -> "RunFolder":
        """A folder named by the caller (a backend's worker, `--run-dir`): new, or holding only
        what a backend put there to start the job (its submission record, job/ files, the lock)
        and the temp files of a start that was killed before it wrote the spec."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise bad_input(f"--run-dir: {path} is a file, not a folder")
        if path.exists() and any(p.name not in PRE_RUN and not is_interrupted_write(p) for p in path.iterdir()):
            if run_record.is_run(path):
                raise bad_input(f"--run-dir: {path} already holds a run; it is never overwritten "
                                f"(`{command(f'gpujob resume {path}')}` continues it)")
            raise bad_input(f"--run-dir: {path} holds files gpujob did not make; give a new or empty folder")
        if not path.exists():
            return cls.start(path, run_record.new_submission("local", path.name))
        if not run_record.is_run(path):  # what a backend put there first (job/), nothing of a user's
            run_record.write(path, run_record.new_submission("local", path.name))
        remove_interrupted_writes(path)
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> "RunFolder":
        """A run folder written before, to resume into: gpujob made it and its job started."""
        path = Path(path)
        run_record.read(path)  # exit 2 unless gpujob made this folder
        if not RunPaths(path).spec.is_file():
            raise bad_input(f"{path}: the run never started (no {SPEC}); nothing to resume")
        return cls(path)

    def remove_if_unstarted(self) -> None:
        """Take away a folder whose job never started (bad input, a refused submission): it holds
        only what gpujob put there to start it."""
        if self.path.is_dir() and not RunPaths(self.path).spec.exists() and all(
                p.name in PRE_RUN or is_interrupted_write(p) for p in self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)

    def trained_anything(self) -> bool:
        return RunPaths(self.path).trained_anything()

    def discard_unstarted(self) -> bool:
        """Take away a folder whose job was stopped before it trained anything: its spec,
        environment and job files are all gpujob's, and nothing is lost. False, touching nothing,
        once anything was trained."""
        if self.trained_anything():
            return False
        for name in (SPEC, ENV, ERROR_LOG, METRICS, *PRE_RUN):
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        remove_interrupted_writes(self.path)
        try:
            self.path.rmdir()
        except OSError:
            pass  # something else is in it: leave it alone
        return True

    @property
    def finished(self) -> bool:
        """Whether the run wrote its summary whole. A summary.json damaged since (cut short, a
        folder in its place) is not a finished run: resuming from the final checkpoint writes it
        again."""
        return whole_summary(self.path) is not None

    def keep_metrics(self, count: int) -> list[int]:
        """Cut metrics.jsonl back to its first `count` lines: the records a checkpoint includes
        (the steps after it are trained again and their lines written again). Of those, a line
        that is not whole JSON (damaged on disk) is dropped and every intact one kept; returns
        the numbers of the lines dropped, for the caller to say so."""
        path = self.file(METRICS)
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        kept, damaged = [], []
        for number, line in enumerate(lines[:count], start=1):
            try:
                json.loads(line)
                kept.append(line)
            except ValueError:
                damaged.append(number)
        self.write_text(METRICS, "".join(line + "\n" for line in kept))
        return damaged

    def discard(self) -> bool:
        """Take back what a start that found bad input wrote (gpujob's own files), and the folder
        itself when this process made it; what a backend put there is the backend's to remove.
        False, touching nothing, once anything was trained: a spec error found mid-run (a label
        past num_classes, a folder made unwritable) keeps the run's metrics and checkpoints."""
        if self.trained_anything():
            return False
        for name in (SPEC, METRICS, TIMING, PLOT, ENV, ERROR_LOG):
            self.file(name).unlink(missing_ok=True)
        # what the job's listeners write from its start: device samples (one file a node) and
        # TensorBoard's events (runner/training/sampler.py, tensorboard_events.py); nothing trained
        for samples in self.path.glob("utilisation*.jsonl"):
            samples.unlink(missing_ok=True)
        shutil.rmtree(self.file("tensorboard"), ignore_errors=True)
        remove_interrupted_writes(self.path)
        if self.made_here:
            self.remove_if_unstarted()
        return True

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
        """Every intact record of metrics.jsonl (a line damaged on disk, or cut short by a kill,
        is left out; the others are all kept)."""
        path = self.file(METRICS)
        if not path.exists():
            return []
        records = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records


class MetricsListener:
    """Writes each step and epoch record to metrics.jsonl as it happens."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def on_start(self, start: dict) -> None:
        pass

    def on_step(self, record: dict) -> None:
        self.folder.append_metric(record)

    def on_epoch(self, record: dict) -> None:
        self.folder.append_metric(record)
