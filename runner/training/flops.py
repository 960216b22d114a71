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


def count_step(model_spec, shape, num_classes: int | None, batch=None, step_fn=None) -> StepCount | None:
    """Count one training step of the job's own step on `batch` (default: a built-in dataset's
    batch of `shape`) on the meta device: FLOPs with torch.utils.flop_counter, and the operations
    dispatched (each a kernel launch on a GPU, views left out). None where it cannot be counted."""
    from runner.training.models import build_model
    from runner.training.samples import image_batch, on_meta_or_real
    from runner.training.steps import Step, batch_len

    batch = image_batch(shape) if batch is None else batch
    step_fn = step_fn or Step()
    try:
        counted = on_meta_or_real(lambda model, b: _count(model, b, step_fn),
                                  lambda: build_model(model_spec, shape, num_classes), batch)
    except Exception:  # counting is a report, never a reason for a job to fail
        return None
    n = max(batch_len(batch), 1)
    total, forward_flops, kernels, forward_kernels = counted
    if not total:
        return None
    return StepCount(total // n, forward_flops // n, kernels, forward_kernels)


def _count(model, batch, step_fn) -> tuple[int, int, int, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, _OpCounter() as ops:
        loss, _named = step_fn(model, batch)
        forward_flops, forward_kernels = counter.get_total_flops(), ops.count
        loss.backward()
    return counter.get_total_flops(), forward_flops, ops.count, forward_kernels


def training_flops_per_sample(model_spec, shape, num_classes: int, batch=None, step_fn=None) -> int | None:
    """Forward and backward FLOPs of one sample through the job's step, or None where it cannot be counted."""
    counted = count_step(model_spec, shape, num_classes, batch, step_fn)
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
