"""TensorBoard event files in RUN/tensorboard/, written by rank 0 as the run goes: per logged step
the loss, learning rate, samples/s and the user's named values; per epoch the train and test
loss, accuracy and named test values; and the run's hyperparameters for the HParams view.

Written with torch.utils.tensorboard.SummaryWriter where the `tensorboard` package is installed
(the `tensorboard` extra); where it is not, a run writes none and loses nothing else. A resumed
run purges what the earlier attempt logged past the checkpoint it resumes from, so each step
appears once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runner.spec.model import JobSpec

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_DIR = "tensorboard"
# The scalars the HParams view compares runs by: the last value of each tag.
HPARAM_METRICS = ("epoch/test_loss", "epoch/test_accuracy", "epoch/train_loss")


def tensorboard_listeners(run_dir: Path, spec: JobSpec) -> list:
    """[the listener] where SummaryWriter can be imported, else []."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (raises without the tensorboard package)
    except ImportError:
        return []
    return [TensorBoardListener(Path(run_dir) / TENSORBOARD_DIR, spec)]


class TensorBoardListener:
    def __init__(self, log_dir: Path, spec: JobSpec):
        self.log_dir, self.spec = log_dir, spec
        self.writer: "SummaryWriter | None" = None

    def on_start(self, start: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops what an earlier attempt logged past the checkpoint (whose
        # own step's records metrics.jsonl keeps); the records from there on come again
        resumed_at = start.get("resumed_at_step")
        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if resumed_at is None else resumed_at + 1)
        self._hparams(start)

    def on_step(self, record: dict) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for key in ("loss", "lr", "samples_per_s"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"step/{key}", record[key], step)
        for name, value in (record.get("metrics") or {}).items():
            self.writer.add_scalar(f"step/{name}", value, step)

    def on_epoch(self, record: dict) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for key in ("loss", "test_loss", "test_accuracy", "samples_per_s"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{'train_loss' if key == 'loss' else key}", record[key], step)
        for group in ("metrics", "test_metrics"):
            for name, value in (record.get(group) or {}).items():
                self.writer.add_scalar(f"epoch/{'test_' if group == 'test_metrics' else ''}{name}", value, step)
        self.writer.add_scalar("epoch/epoch", record["epoch"], step)
        self.writer.flush()  # a TensorBoard open on the run sees each epoch as it ends

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _hparams(self, start: dict) -> None:
        """The HParams view's experiment and session, in this run's own event file: the metrics it
        shows are the scalar tags above, so no second folder per run (add_hparams makes one)."""
        from torch.utils.tensorboard.summary import hparams

        assert self.writer is not None
        experiment, session_start, session_end = hparams(hparameters(self.spec, start["world_size"]),
                                                         {tag: 0.0 for tag in HPARAM_METRICS})
        file_writer = self.writer.file_writer
        assert file_writer is not None, "SummaryWriter opens its file writer as it is made"
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)


def hparameters(spec: JobSpec, world_size: int) -> dict:
    """The fields that tell runs apart, as the HParams view takes them (numbers, text, booleans)."""
    s = spec
    values = {"model": s.model.name, "dataset": s.data.dataset, "batch_size": s.data.batch_size,
              "optimizer": s.optimizer.name, "lr": s.optimizer.lr, "momentum": s.optimizer.momentum,
              "weight_decay": s.optimizer.weight_decay, "schedule": s.optimizer.schedule, "epochs": s.train.epochs,
              "precision": s.train.precision, "seed": s.train.seed, "compile": s.train.compile,
              "gpu": s.resources.gpu or "cpu", "world_size": world_size}
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}
