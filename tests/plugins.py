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


class Saboteur(nn.Module):
    """An MLP that, in the rank named by `rank`, raises or hangs at training step `at_step`."""

    def __init__(self, num_classes: int, input_shape, rank: int, mode: str, at_step: int, hung_note: str | None):
        super().__init__()
        import os

        self.net = tiny_mlp(num_classes, input_shape)
        self.armed = int(os.environ.get("RANK", 0)) == rank
        self.mode, self.at_step, self.calls, self.hung_note = mode, at_step, 0, hung_note

    def forward(self, x):
        if self.training:
            self.calls += 1
        if self.armed and self.calls == self.at_step:
            if self.mode == "raise":
                raise ValueError(f"planted failure at step {self.at_step}")
            import time

            if self.hung_note:  # for a test that must act only once the rank hangs, however loaded the machine
                open(self.hung_note, "w").close()
            time.sleep(3600)  # a hung rank: a deadlock, a stuck filesystem, a dead GPU
        return self.net(x)


def saboteur(num_classes: int, input_shape, rank: int = 1, mode: str = "raise", at_step: int = 3,
             hung_note: str | None = None) -> nn.Module:
    return Saboteur(num_classes, input_shape, rank, mode, at_step, hung_note)


def turn_recorder(train: bool, root: str, samples: int = 256) -> Dataset:
    """Blobs that note in ROOT/turns.log when each rank starts and ends loading them, slowly,
    like a download: shows whether ranks load one after another or all at once."""
    import os
    import time
    from pathlib import Path

    log = Path(root) / "turns.log"
    rank = os.environ.get("RANK", "0")
    with log.open("a") as handle:
        handle.write(f"start {rank}\n")
    time.sleep(0.3)
    with log.open("a") as handle:
        handle.write(f"end {rank}\n")
    return Blobs(train, root, samples)


class UnlabelledBlobs(Blobs):
    """Blobs without a num_classes attribute: the spec must say how many classes there are."""

    num_classes = None


def unlabelled_blobs(train: bool, root: str, **args) -> Dataset:
    return UnlabelledBlobs(train, root, **args)


SEEN_DTYPES: list = []  # what the probes saw (read back from PROBE_LOG: the job trains in a process of its own)
SEEN_COMPILING: list = []
PROBE_LOG = "GPUJOB_TEST_PROBE_LOG"  # the file the probes note what they saw in, one JSON line per forward pass


def read_probe_log(path) -> None:
    """What the job's probes noted, into SEEN_DTYPES and SEEN_COMPILING."""
    import json
    from pathlib import Path

    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        seen = json.loads(line)
        SEEN_COMPILING.append(seen["compiling"])
        SEEN_DTYPES.append(seen["dtype"])


class Probe(nn.Module):
    """An MLP that notes, in its forward pass, the dtype its first layer computed in and
    whether torch.compile was tracing it: what the precision and compile settings really did."""

    def __init__(self, num_classes: int, input_shape):
        super().__init__()
        self.net = tiny_mlp(num_classes, input_shape)

    def forward(self, x):
        import torch

        hidden = self.net[1](self.net[0](x))
        if x.device.type != "meta":  # gpujob counting FLOPs and memory on the meta device is not training
            import json
            import os

            # read while tracing (torch.compile folds it to True there), before the file breaks the graph
            seen = {"compiling": torch.compiler.is_compiling(), "dtype": str(hidden.dtype)}
            with open(os.environ[PROBE_LOG], "a") as log:
                log.write(json.dumps(seen) + "\n")
        return self.net[3](self.net[2](hidden))


def probe(num_classes: int, input_shape) -> nn.Module:
    return Probe(num_classes, input_shape)


class SlowBlobs(Blobs):
    """Blobs whose every sample takes `delay_s` to make, like a notebook's per-sample decoding and
    transforms feeding a device that has little to do: the pattern gpujob must call data-bound."""

    def __init__(self, train: bool, root: str, samples: int = 512, delay_s: float = 0.002):
        super().__init__(train, root, samples)
        self.delay_s = delay_s

    def __getitem__(self, i):
        import time

        time.sleep(self.delay_s)
        return super().__getitem__(i)


def slow_blobs(train: bool, root: str, **args) -> Dataset:
    return SlowBlobs(train, root, **args)
