"""Every file of a run folder, named once. Key names and file names are a contract other tools
read: add, never rename.

    spec.yaml, metrics.jsonl, summary.json, timing.json, loss_curve.png, env.json, cost.json,
    model.pt, error.log, rank-N.log, checkpoints/step-NNNNNNNN.pt(.sha256),
    submission.json (the record), .lock, and job/: what the backend sent and what it said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SPEC, METRICS, SUMMARY, TIMING, PLOT, ENV = (
    "spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json")
COST, MODEL, ERROR_LOG, CHECKPOINTS = "cost.json", "model.pt", "error.log", "checkpoints"
RECORD, LOCK = "submission.json", ".lock"
JOB = "job"  # what a backend sent to start the run, and what the job said there
# In job/: the spec as sent, the request exactly as sent (every backend's one name), a detached
# command's output and exit code, and the user's code shipped with the job.
JOB_SPEC, JOB_REQUEST, JOB_OUTPUT, JOB_EXIT_CODE, JOB_CODE = (
    "spec.yaml", "request.json", "output.log", "exit-code", "code")
# What a folder holds before its job starts: nothing a user made, and nothing of a run's results.
PRE_RUN = {RECORD, LOCK, JOB}
SUMMARY_KEYS = ("epochs", "train_loss", "test_loss", "wall_s")  # what every summary.json holds
CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})\.pt$")
DIGEST = ".sha256"  # the checksum file beside each checkpoint


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run folder's files."""

    folder: Path

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))

    def __truediv__(self, name: str) -> Path:
        return self.folder / name

    @property
    def spec(self) -> Path:
        return self.folder / SPEC

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS

    @property
    def summary(self) -> Path:
        return self.folder / SUMMARY

    @property
    def error_log(self) -> Path:
        return self.folder / ERROR_LOG

    @property
    def record(self) -> Path:
        return self.folder / RECORD

    @property
    def job(self) -> Path:
        return self.folder / JOB

    @property
    def job_spec(self) -> Path:
        return self.folder / JOB / JOB_SPEC

    @property
    def job_request(self) -> Path:
        return self.folder / JOB / JOB_REQUEST

    @property
    def job_code(self) -> Path:
        return self.folder / JOB / JOB_CODE

    @property
    def checkpoints_dir(self) -> Path:
        return self.folder / CHECKPOINTS

    def rank_log(self, rank: int) -> Path:
        return self.folder / f"rank-{rank}.log"

    def checkpoint(self, step: int) -> Path:
        return self.folder / CHECKPOINTS / f"step-{step:08d}.pt"

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, newest first."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name)]
        return sorted(found, key=checkpoint_step, reverse=True)

    def newest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[0] if found else None

    def trained_anything(self) -> bool:
        """Whether the job wrote anything of the user's: a metrics line, a checkpoint (or the
        folder for them), the final weights or summary. Such a folder is never taken away."""
        metrics = self.metrics
        if metrics.is_dir() or (metrics.exists() and metrics.stat().st_size > 0):
            return True
        return any((self.folder / name).exists() for name in (CHECKPOINTS, SUMMARY, MODEL))


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file was written at (its name says it)."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    assert match is not None, f"{path} is not named as a checkpoint (checkpoints() lists only those)"
    return int(match.group(1))


def digest_file(path: Path) -> Path:
    return path.with_name(path.name + DIGEST)
