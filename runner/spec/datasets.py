"""The built-in datasets as the spec knows them: shape, classes, normalisation and size, so a spec
is resolved (its model's class count) and a job is sized without loading anything."""

from __future__ import annotations

from dataclasses import dataclass

DOWNLOADED = ("fashion_mnist", "mnist", "cifar10")  # torchvision's: on disk, or downloaded by the job


@dataclass(frozen=True)
class DatasetInfo:
    shape: tuple[int, int, int]  # channels, height, width
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    samples: int = 0  # train and test together: each worker holds them all, as uint8
    test_samples: int = 0

    @property
    def train_samples(self) -> int:
        return self.samples - self.test_samples

    @property
    def held_bytes(self) -> int:
        """What each worker keeps of the dataset (runner/batches.py TensorBatches: uint8 on its device)."""
        c, h, w = self.shape
        return self.samples * c * h * w


BUILTIN_INFO = {
    "fashion_mnist": DatasetInfo((1, 28, 28), 10, (0.2860,), (0.3530,), 70_000, 10_000),
    "mnist": DatasetInfo((1, 28, 28), 10, (0.1307,), (0.3081,), 70_000, 10_000),
    "cifar10": DatasetInfo((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 60_000, 10_000),
    "digits": DatasetInfo((1, 8, 8), 10, (0.3054,), (0.3762,), 1_797, 1_797 - int(0.8 * 1_797)),
}
