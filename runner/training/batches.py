"""Batches for the training loop, two ways with one order.

`TensorBatches` is the fast path: a whole split lives on the device as uint8, each
batch is gathered by index and normalised there, so no per-sample Python or PIL work
happens per step. A split too big for its share of GPU memory (DEVICE_DATA_FRACTION) stays
in pinned host memory instead: batches are gathered there and copied without blocking. `LoaderBatches` is the DataLoader path for datasets given as a
factory. Both take their indices from `train_order`, so with the same seed they
yield the same batches (tests check this), and in DDP each rank takes a disjoint
slice of every global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

EVAL_BATCH = 1024
# Training batches are gathered and normalised this many samples at a time, then split: a few
# large device ops per epoch instead of four small ones per step (about 5% of a CPU epoch of
# the seeds' MLP), with the extra memory bounded to one chunk.
GATHER_SAMPLES = 8192
# The most of a GPU's memory the data may take (both splits, uint8): the rest is the model's,
# its activations' and the optimizer's. Past it the data stays in pinned host memory.
DEVICE_DATA_FRACTION = 0.25


def data_home(nbytes: int, device, device_memory: int | None = None) -> str:
    """Where a split of `nbytes` is held for `device`: "device", or "pinned host memory" when it
    would take more than DEVICE_DATA_FRACTION of a GPU's memory. A CPU's data is already home."""
    if device.type != "cuda":
        return "device"
    if device_memory is None:
        import torch

        device_memory = torch.cuda.get_device_properties(device).total_memory
    return "device" if nbytes <= DEVICE_DATA_FRACTION * device_memory else "pinned host memory"


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1


def train_order(n: int, global_batch: int, seed: int, epoch: int, shard: Shard) -> list["torch.Tensor"]:
    """This rank's index batches for one epoch: a seeded permutation cut into global
    batches (the last partial one dropped, so every rank takes the same number of
    equal steps), each split rank::world_size."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    steps = n // global_batch
    return [order[i * global_batch : (i + 1) * global_batch][shard.rank :: shard.world_size] for i in range(steps)]


def eval_order(n: int, shard: Shard) -> list["torch.Tensor"]:
    """Every test sample exactly once across ranks, in fixed order."""
    import torch

    mine = torch.arange(shard.rank, n, shard.world_size)
    return list(mine.split(EVAL_BATCH))


class TensorBatches:
    """A split held as uint8 on the device (or, too big for it, in pinned host memory), batched
    by index, normalised on the device."""

    def __init__(self, train, test, mean, std, device, global_batch: int, seed: int, shard: Shard,
                 home: str | None = None):
        import torch

        nbytes = sum(t.numel() * t.element_size() for t in (train.images, train.labels, test.images, test.labels))
        self.home = home or data_home(nbytes, device)
        on_device = self.home == "device"

        def keep(tensor):
            if on_device:
                return tensor.to(device)
            return tensor.pin_memory() if device.type == "cuda" else tensor  # pinned: copies need no staging

        self.train_images, self.train_labels = keep(train.images), keep(train.labels)
        self.test_images, self.test_labels = keep(test.images), keep(test.labels)
        shape = (1, -1, 1, 1)
        # Folding /255 into the affine map: x * scale + shift == (x/255 - mean) / std.
        std_t = torch.tensor(std, device=device).view(shape)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(shape) / std_t
        self.device, self.global_batch, self.seed, self.shard = device, global_batch, seed, shard
        self.steps_per_epoch = len(train) // global_batch

    def _gather(self, images, labels, idx):
        idx = idx.to(images.device, non_blocking=True)  # gathered where the split is held
        x, y = images.index_select(0, idx), labels.index_select(0, idx)
        if self.device.type == "cuda" and x.device != self.device:  # held on the host: pinned, then
            x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.float().mul_(self.scale).add_(self.shift), y

    def train(self, epoch: int, skip: int = 0) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """This epoch's batches, after the first `skip` (already trained before a resume)."""
        import torch

        order = train_order(len(self.train_labels), self.global_batch, self.seed, epoch, self.shard)[skip:]
        per_chunk = max(1, GATHER_SAMPLES // max(len(order[0]), 1)) if order else 1
        for start in range(0, len(order), per_chunk):
            chunk = order[start : start + per_chunk]
            x, y = self._gather(self.train_images, self.train_labels, torch.cat(chunk))
            sizes = [len(idx) for idx in chunk]
            yield from zip(x.split(sizes), y.split(sizes))

    def test(self) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        for idx in eval_order(len(self.test_labels), self.shard):
            yield self._gather(self.test_images, self.test_labels, idx)


def die_with_parent(_worker_id: int) -> None:
    """In a DataLoader worker: SIGKILL when the training process dies, even by SIGKILL, instead
    of living on for seconds until DataLoader's own watchdog notices."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LoaderBatches:
    """The DataLoader path, for factory datasets: same order, per-sample work in workers."""

    def __init__(self, train_set, test_set, device, global_batch: int, seed: int, shard: Shard, num_workers: int):
        self.train_set, self.test_set = train_set, test_set
        self.device, self.global_batch, self.seed, self.shard = device, global_batch, seed, shard
        self.num_workers = num_workers
        self.steps_per_epoch = len(train_set) // global_batch

    def _load(self, dataset, batches) -> Iterator:
        from torch.utils.data import DataLoader

        from runner.training.steps import to_device

        loader = DataLoader(
            dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=die_with_parent if self.num_workers else None,
        )
        for batch in loader:  # (x, y) for the default step; any structure for a user's step
            yield to_device(batch, self.device)

    def train(self, epoch: int, skip: int = 0) -> Iterator:
        order = train_order(len(self.train_set), self.global_batch, self.seed, epoch, self.shard)[skip:]
        return self._load(self.train_set, order)

    def test(self) -> Iterator:
        return self._load(self.test_set, eval_order(len(self.test_set), self.shard))
