"""What one batch costs: the loss the optimizer minimises, and any values worth averaging.

The default is classification (cross-entropy of `model(x)` against labels `y`, with accuracy in
evaluation). `train.step: package.module:function` replaces it with the user's own:
`function(model, batch) -> loss` or `-> (loss, {name: value})`, where `batch` is whatever the
dataset yields (a tuple, a dict of tensors...), already on the device. Autocast, DDP, gradient
scaling, checkpoints and timing stay the runner's: the function only computes.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from runner.usercode.imports import import_factory
from runner.errors import bad_input

if TYPE_CHECKING:
    import torch

STEP_FIELD = "train.step"
SHAPE_OF_A_STEP = "it must return a loss tensor, or (loss, {name: value})"


class Step:
    """A training step: `step(model, batch) -> (loss, {name: value tensor})`."""

    classification = True  # accuracy is reported only for the default step

    def __call__(self, model, batch) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        import torch.nn.functional as F

        x, y = batch
        return F.cross_entropy(model(x), y), {}


class UserStep(Step):
    classification = False

    def __init__(self, function: Callable, path: str):
        self.function, self.path = function, path

    def __call__(self, model, batch):
        return checked_result(self.function(model, batch), self.path)


def step_for(spec) -> Step:
    """The job's step: the user's `train.step` (imported and its signature checked) or the default."""
    path = spec.train.step
    if path is None:
        return Step()
    function = import_factory(path, STEP_FIELD)
    try:
        inspect.signature(function).bind(None, None)
    except TypeError:
        raise bad_input(f"{STEP_FIELD}: {path} must take (model, batch)") from None
    except ValueError:
        pass  # no signature to read: the first call tells
    return UserStep(function, path)


def checked_result(result: Any, path: str) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
    """(loss, named values) from what a user's step returned, or one line saying what is wrong."""
    import torch

    loss, named = (result if isinstance(result, tuple) and len(result) == 2 else (result, {}))
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()):
        what = type(loss).__name__ if not isinstance(loss, torch.Tensor) else f"a tensor of shape {tuple(loss.shape)}"
        raise bad_input(f"{STEP_FIELD}: {path} returned {what} as the loss; {SHAPE_OF_A_STEP}")
    if not isinstance(named, dict) or not all(isinstance(k, str) and k.isidentifier() for k in named):
        raise bad_input(f"{STEP_FIELD}: {path} returned {type(named).__name__} beside the loss; {SHAPE_OF_A_STEP}, "
                        "names being identifiers")
    values = {}
    for name, value in named.items():
        value = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
        if value.numel() != 1:
            raise bad_input(f"{STEP_FIELD}: {path} returned {name} of shape {tuple(value.shape)}; named values are "
                            "single numbers")
        values[name] = value.reshape(())
    return loss.reshape(()), values


def map_tensors(batch, change):
    """The batch with `change` applied to every tensor in it (tuples, lists, named tuples and
    dicts kept as they are)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return change(batch)
    if isinstance(batch, dict):
        return {key: map_tensors(value, change) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        changed = [map_tensors(value, change) for value in batch]
        return type(batch)(*changed) if hasattr(batch, "_fields") else type(batch)(changed)
    return batch


def to_device(batch, device):
    """The batch with every tensor in it on `device`."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def first_tensor(batch):
    """The first tensor in a batch (depth first), or None."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def batch_len(batch) -> int:
    """How many samples a batch holds: the first tensor's leading size."""
    tensor = first_tensor(batch)
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() else 1


def head(batch, n: int):
    """The batch's first `n` samples."""
    return map_tensors(batch, lambda t: t[:n] if t.dim() else t)
