"""A user's own model and dataset, given in a spec as `tests.plugins:FACTORY`."""

import torch
from torch import nn
from torch.utils.data import Dataset


def tiny_mlp(num_classes: int, input_shape, hidden: int = 32) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class Blobs(Dataset):
    """Four Gaussian blobs in 2-D, shaped (1, 1, 2) like a tiny image."""

    num_classes = 4

    def __init__(self, train: bool, root: str, samples: int = 512):
        gen = torch.Generator().manual_seed(0 if train else 1)
        self.labels = torch.randint(0, 4, (samples,), generator=gen)
        centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
        self.points = centres[self.labels] + torch.randn(samples, 2, generator=gen) * 0.7

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.points[i].view(1, 1, 2), self.labels[i]


def blobs(train: bool, root: str, **args) -> Dataset:
    return Blobs(train, root, **args)


class Exploding(nn.Module):
    """Fails in its first forward pass, like a user's bug."""

    def __init__(self, num_classes: int, input_shape):
        super().__init__()
        self.linear = nn.Linear(1, num_classes)

    def forward(self, x):
        raise RuntimeError("shape mismatch in user code")


def exploding(num_classes: int, input_shape) -> nn.Module:
    return Exploding(num_classes, input_shape)
