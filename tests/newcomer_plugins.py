"""A newcomer's own code, as issue 29 tried it: a text classifier over int token ids given as a
dict, and a model taking several inputs through a step of the user's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class Tokens(Dataset):
    """Sequences of 12 token ids; the label is whether the first id is in the vocabulary's upper half."""

    num_classes = 2

    def __init__(self, train: bool, samples: int = 512, length: int = 12, vocab: int = 100):
        gen = torch.Generator().manual_seed(0 if train else 1)
        self.tokens = torch.randint(0, vocab, (samples, length), generator=gen)
        self.labels = (self.tokens[:, 0] >= vocab // 2).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"ids": self.tokens[i]}, self.labels[i]


class BagOfWords(nn.Module):
    def __init__(self, num_classes: int, vocab: int = 100, dim: int = 16):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.out(self.bag(x["ids"]))


def tokens(train: bool, root: str) -> Dataset:
    return Tokens(train)


def bag_of_words(num_classes: int, input_shape) -> nn.Module:
    return BagOfWords(num_classes)


class Pairs(Dataset):
    """Two inputs per sample, a dict of a float vector and an int category, and a float target."""

    def __init__(self, train: bool, samples: int = 256):
        gen = torch.Generator().manual_seed(2 if train else 3)
        self.x = torch.randn(samples, 4, generator=gen)
        self.kind = torch.randint(0, 5, (samples,), generator=gen)
        self.y = self.x.sum(1, keepdim=True) + self.kind.unsqueeze(1).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "kind": self.kind[i], "y": self.y[i]}


class TwoInputs(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.kind = nn.Embedding(5, 4)
        self.net = nn.Linear(8, 1)

    def forward(self, x, kind):
        return self.net(torch.cat([x, self.kind(kind)], dim=1))


def pairs(train: bool, root: str) -> Dataset:
    return Pairs(train)


def two_inputs(num_classes, input_shape) -> nn.Module:
    return TwoInputs(num_classes, input_shape)


def pairs_step(model, batch):
    prediction = model(batch["x"], batch["kind"])
    return F.mse_loss(prediction, batch["y"]), {"mae": (prediction - batch["y"]).abs().mean()}
