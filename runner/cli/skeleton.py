"""`gpujob init NAME`: a spec and a module for the user's own model, data and step, which pass
`gpujob submit NAME.yaml --dry-run` as written and train offline on a CPU in seconds, to be
edited from there. Nothing that exists is ever overwritten."""

from __future__ import annotations

import re
from pathlib import Path

from runner.errors import bad_input
from runner.invocation import command

SPEC = """\
# Your own job: the model, data and step are in {module}.py beside this file, found there and
# shipped with the job to whichever backend runs it. Check it with:
#   {check}
name: {name}
model:
  name: {module}:model
  num_classes: 3
  args: {{hidden: 64}}
data:
  dataset: {module}:dataset
  batch_size: 32
  num_workers: 0
optimizer:
  name: adam
  lr: 0.003
train:
  epochs: 5
  log_every_steps: 10
  step: {module}:step
"""

MODULE = '''\
"""The model, data and step of the job {name}.yaml names. Replace each with your own: gpujob calls
dataset(train, root) for each split, model(num_classes, input_shape, **model.args) once, and
step(model, batch) on every batch (in training, and under no_grad over the test split)."""

import torch
from torch import nn
from torch.nn import functional as F


def dataset(train: bool, root: str, samples: int = 1200, features: int = 8, classes: int = 3, seed: int = 0):
    """A split of a dataset: anything with __len__ and __getitem__ whose items collate into
    batches (tuples, dicts of tensors). This one is made up, so the job runs offline: points
    labelled by which of `classes` fixed directions they lie closest to."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    directions = torch.randn(classes, features, generator=generator)
    y = (x @ directions.T).argmax(dim=1)
    cut = int(samples * 0.8)
    chosen = slice(0, cut) if train else slice(cut, samples)
    return torch.utils.data.TensorDataset(x[chosen], y[chosen])


def model(num_classes: int, input_shape: tuple, hidden: int = 64) -> nn.Module:
    """The network: input_shape is one sample's shape, num_classes from the spec's model.num_classes."""
    (features,) = input_shape
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def step(model: nn.Module, batch):
    """The loss for one batch (a one-element tensor), and named values reported beside it."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {{"accuracy": (logits.argmax(dim=1) == y).float().mean()}}
'''

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def write_skeleton(name: str, folder: Path) -> list[Path]:
    """NAME.yaml and NAME_job.py in `folder`; exit 2, writing nothing, when NAME cannot name a
    Python module or either file exists."""
    if not _NAME.match(name) or len(name) > 76:
        raise bad_input(f"NAME: '{name}' must be a Python name (letters, digits and _, not starting with a digit), "
                        "since NAME_job.py is imported as a module")
    module = f"{name}_job"
    spec, code = folder / f"{name}.yaml", folder / f"{module}.py"
    for path in (spec, code):
        if path.exists():
            raise bad_input(f"{path} exists; gpujob init never overwrites a file: pick another NAME")
    written = []
    for path, text in ((spec, SPEC), (code, MODULE)):
        with open(path, "x") as out:  # "x": a file that appeared meanwhile is not overwritten either
            out.write(text.format(name=name, module=module, check=command(f"gpujob submit {spec.name} --dry-run")))
        written.append(path)
    return written
