"""Hostile factories for tests/test_integrity.py: datasets that fail late, block, or end the
process, as a user's own code may."""

from __future__ import annotations

import os
import time

import torch
from torch.utils.data import Dataset


class LateBad(Dataset):
    """260 samples of y = i % 10, except training sample 228, labelled 10: drawn only mid-run (a
    label past num_classes that the load-time check cannot see, since the labels are not exposed)."""

    def __init__(self, train: bool, samples: int = 260):
        self.samples, self.train = samples, train

    def __len__(self):
        return self.samples

    def __getitem__(self, i):
        x = torch.full((1, 2, 2), float(i % 10) / 10)
        return x, (10 if i == 228 and self.train else i % 10)


def latebad(train: bool, root: str) -> Dataset:
    return LateBad(train)


def sleeps_forever(train: bool, root: str) -> Dataset:
    """A factory that never returns: a stuck network mount, a dead NFS server."""
    while True:
        time.sleep(3600)


def exits_zero(train: bool, root: str) -> Dataset:
    raise SystemExit(0)


def exits_hard(train: bool, root: str) -> Dataset:
    os._exit(7)


class Slow(Dataset):
    """Blobs whose every sample takes `delay_s` (a slow step, for stop-agreement tests)."""

    num_classes = 4

    def __init__(self, train: bool, samples: int, delay_s: float):
        gen = torch.Generator().manual_seed(0 if train else 1)
        self.labels = torch.randint(0, 4, (samples,), generator=gen)
        self.points = torch.randn(samples, 1, 1, 2, generator=gen) + self.labels.view(-1, 1, 1, 1).float()
        self.delay_s = delay_s

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        time.sleep(self.delay_s)
        return self.points[i], self.labels[i]


def slow(train: bool, root: str, samples: int = 256, delay_s: float = 0.01) -> Dataset:
    return Slow(train, samples, delay_s if train else 0.0)


def slow_first_load(train: bool, root: str) -> Dataset:
    """Blobs that take 6 s to load the first time (ROOT/loaded marks it): a long first start-up,
    as after a queue or a download, and a quick one after."""
    from pathlib import Path

    from tests.plugins import Blobs

    marker = Path(root) / "loaded"
    if not marker.exists():
        time.sleep(6)
        marker.touch()
    return Blobs(train, root, 4096)
