"""What the training loop is built from: seeds, precision, optimizer and schedule, the
batches, and the device's clock. Kept apart so train.py reads as the loop alone."""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING

from runner.training.batches import LoaderBatches, Shard, TensorBatches
from runner.spec.model import dataset_info
from runner.training.datasets import load_factory_dataset, load_image_tensors
from runner.training.distributed import WorkerContext, in_turns
from runner.errors import bad_input
from runner.gpus import bf16_refusal, capability_of

if TYPE_CHECKING:
    import torch

    from runner.spec.model import JobSpec


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def precision_problem(precision: str, device_type: str, card: str | None = None,
                      capability: float | None = None) -> str | None:
    """Why `train.precision` cannot run on the device, or None: one rule for the run (the card it
    has), the dry run and `gpujob estimate` (the card the job will have, from the GPU catalog). A card
    is judged by its compute capability; None: not known, not refused."""
    if precision == "fp16" and device_type == "cpu":
        return "train.precision: fp16 needs a CUDA or MPS GPU; use bf16 or fp32 on the CPU"
    if precision == "bf16" and device_type == "cuda" and capability is not None:
        refusal = bf16_refusal(card or "this GPU", capability)
        return f"train.precision: {refusal}" if refusal else None
    return None


def cuda_capability(device: "torch.device") -> float:
    """The card's compute capability. Not torch.cuda.is_bf16_supported(): by default it counts
    emulation, and says True on a T4, whose convolutions then fail in cuDNN."""
    import torch

    return capability_of(*torch.cuda.get_device_capability(device))


def autocast_for(precision: str, device: "torch.device"):
    """The autocast context for `train.precision`, or a clear error where the device lacks it."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    cuda = device.type == "cuda"
    problem = precision_problem(precision, device.type, torch.cuda.get_device_name(device) if cuda else None,
                                cuda_capability(device) if cuda else None)
    if problem:
        raise bad_input(problem)
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(spec: "JobSpec", model, total_steps: int, device=None):
    """The optimizer and its schedule. On CUDA the step is one fused kernel per parameter group
    (the same update, far fewer launches); elsewhere PyTorch's default (foreach where it can)."""
    import torch

    o = spec.optimizer
    params = model.parameters()
    fused = True if device is not None and device.type == "cuda" else None  # None: PyTorch's default
    optimizer: torch.optim.Optimizer
    if o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=fused)
    elif o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
    else:
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    if o.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    elif o.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=max(total_steps, 1))
    else:
        scheduler = None
    return optimizer, scheduler


def prepare_batches(spec: "JobSpec", device, ctx: WorkerContext, classification: bool = True):
    """The fast tensor path for builtin datasets, the DataLoader path for factories.
    Returns (batches, shape, num_classes). `classification`: the default step, whose labels
    must lie below num_classes; a user's step may need no classes at all (num_classes None)."""
    d = spec.data
    shard = Shard(ctx.rank, ctx.world_size)
    local_batch = d.batch_size // ctx.world_size
    if local_batch * ctx.world_size != d.batch_size:
        raise bad_input(f"data.batch_size: {d.batch_size} does not split evenly over {ctx.world_size} workers")
    info = dataset_info(d)
    batches: TensorBatches | LoaderBatches
    shape: tuple[int, ...]
    classes: int | None
    if info is not None:
        train_set, test_set = in_turns(ctx, lambda: (load_image_tensors(d, train=True),
                                                     load_image_tensors(d, train=False)))
        batches = TensorBatches(train_set, test_set, info.mean, info.std, device, d.batch_size, spec.train.seed, shard)
        shape, classes = info.shape, info.num_classes
    else:
        train_set, test_set = in_turns(ctx, lambda: (load_factory_dataset(d, train=True),
                                                     load_factory_dataset(d, train=False)))
        batches = LoaderBatches(train_set, test_set, device, d.batch_size, spec.train.seed, shard, d.num_workers)
        shape = sample_shape(train_set[0])
        classes = getattr(train_set, "num_classes", None) or spec.model.num_classes
        if classes is None and classification:
            raise bad_input("model.num_classes: required for a factory dataset without a num_classes attribute")
    if batches.steps_per_epoch == 0:
        raise bad_input(f"data.batch_size: {d.batch_size} is larger than the training set ({len(train_set)} samples)")
    classes = spec.model.num_classes or classes
    if classification:
        assert classes is not None, "a classification without num_classes was refused above"
        check_labels(train_set, test_set, classes)
    return batches, shape, classes


def sample_shape(sample) -> tuple[int, ...]:
    """The model's input shape, as a factory model is told it (`input_shape`): the first tensor
    of a sample, whatever the sample's structure (x, y), a dict, ..."""
    from torch.utils.data import default_collate

    from runner.training.steps import first_tensor

    tensor = first_tensor(default_collate([sample]))  # as the DataLoader will give it: numpy made tensors
    if tensor is None:
        raise bad_input("data.dataset: its samples hold no tensor (a sample is a tensor, or a tuple or dict of them)")
    return tuple(tensor.shape[1:])


def check_labels(train_set, test_set, classes: int) -> None:
    """Labels must be 0 .. num_classes-1; found here, when the data is loaded, not as an
    IndexError deep in a training step. Datasets that keep their labels in `labels` or
    `targets` are checked whole."""
    import torch

    for split in (train_set, test_set):
        labels = next((getattr(split, name) for name in ("labels", "targets") if hasattr(split, name)), None)
        if labels is None or len(labels) == 0:
            continue
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point:
            continue  # not class labels: another loss's targets
        high, low = int(labels.max()), int(labels.min())
        if high >= classes or low < 0:
            raise bad_input(f"model.num_classes: {classes}, but the data has label {high if high >= classes else low}; "
                            f"labels must be 0 to {classes - 1} (raise model.num_classes, or leave it out to take "
                            "the dataset's)")


def sync(device) -> None:
    """Wait for queued device work, so a clock read after it is honest (CUDA is async)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()
