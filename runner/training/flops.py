"""What a training step costs in arithmetic, and what the device could do: the model's training
FLOPs per sample, counted once on PyTorch's meta device (no memory, no arithmetic) with
torch.utils.flop_counter, and the device's peak from the GPU catalog, for achieved TFLOP/s and
MFU (model FLOPs utilisation) in summary.json."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCount:
    """What one training step asks of a device, per sample where it grows with the batch."""

    flops_per_sample: int  # forward and backward
    forward_flops_per_sample: int  # what evaluation costs
    kernels: int  # device operations per training step (forward, backward), whatever the batch
    forward_kernels: int


COUNT_BATCH = 2  # BatchNorm refuses to train on a batch of one where a feature map is 1x1


def count_step(model_spec, shape, num_classes: int) -> StepCount | None:
    """Count one training step on the meta device: FLOPs with torch.utils.flop_counter, and the
    operations dispatched (each a kernel launch on a GPU, views left out). None where the
    model cannot run there (user code the meta device cannot run)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from runner.training.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(model_spec, shape, num_classes)
            x = torch.zeros(COUNT_BATCH, *shape)
            y = torch.zeros(COUNT_BATCH, dtype=torch.long)
            with FlopCounterMode(display=False) as counter, _OpCounter() as ops:
                loss = F.cross_entropy(model(x), y)
                forward_flops, forward_kernels = counter.get_total_flops(), ops.count
                loss.backward()
            total = counter.get_total_flops()
    except Exception:  # counting is a report, never a reason for a job to fail
        return None
    if not total:
        return None
    return StepCount(total // COUNT_BATCH, forward_flops // COUNT_BATCH, ops.count, forward_kernels)


def training_flops_per_sample(model_spec, shape, num_classes: int) -> int | None:
    """Forward and backward FLOPs of one sample through the model, or None where it cannot be counted."""
    counted = count_step(model_spec, shape, num_classes)
    return counted.flops_per_sample if counted else None


def _OpCounter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.count += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


def peak_tflops(device, precision: str) -> float | None:
    """The device's dense peak for this precision, from the catalog (None: a CPU, or a card the
    catalog does not know)."""
    if device.type != "cuda":
        return None
    import torch

    from runner.gpus import CATALOG

    name = torch.cuda.get_device_name(device)
    memory_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    for gpu in sorted(CATALOG, key=lambda g: -g.min_memory_gb):
        if gpu.is_device(name, memory_gb):
            return gpu.peak_tflops(precision)
    return None
