"""Does the job fit? What one worker holds (weights, gradients, optimizer state, the batch's
activations), measured without allocating it, against what the machine it runs on has: the
requested GPU's memory from the catalog, or this machine's RAM for a CPU job here.

Activations are counted by running the job's own step once on PyTorch's "meta" device (shapes
only, no memory, no arithmetic) on a batch shaped as the job's (runner/training/samples.py), so a
batch of a billion or a 10000x10000 image is judged from its sizes instead of crashing the dry
run. Models that cannot run on the meta device (some user code) are measured on two real samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import bad_input

GIB = 2**30
# What a process holds besides the model: CUDA's context and allocator, or torch's own CPU memory.
FIXED_BYTES = {"cuda": int(0.75 * GIB), "mps": int(0.5 * GIB), "cpu": int(0.4 * GIB)}
USABLE = 0.9  # of a card's memory: the driver keeps some, fragmentation costs some


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    state_bytes: int  # weights, gradients, optimizer state
    per_sample_bytes: int  # activations kept for backward, and the sample itself
    fixed_bytes: int
    local_batch: int
    data_bytes: int = 0  # the dataset each worker holds on its device

    @property
    def per_worker(self) -> int:
        return self.fixed_bytes + self.state_bytes + self.data_bytes + self.per_sample_bytes * self.local_batch

    def largest_batch(self, capacity: int) -> int:
        """The largest per-worker batch that fits in `capacity` bytes (0 if not even one)."""
        room = capacity * USABLE - self.fixed_bytes - self.state_bytes - self.data_bytes
        return max(0, int(room // max(self.per_sample_bytes, 1)))


def activation_bytes_per_sample(model_factory, batch, precision: str, step_fn=None) -> int:
    """Bytes of every leaf module's output for one sample (what autograd keeps for backward), with
    the job's own step run on `batch` (runner/training/samples.py), counted on the meta device
    where it can run there; half for bf16/fp16 autocast. Plus the sample itself, in its dtypes."""
    from runner.training.samples import input_bytes_per_sample, on_meta_or_real, step_loss
    from runner.training.steps import Step, batch_len

    step_fn = step_fn or Step()
    total = on_meta_or_real(lambda model, b: _count_outputs(model, lambda: step_loss(step_fn, model, b)),
                            model_factory, batch)
    scale = 0.5 if precision != "fp32" else 1.0
    return int(total * scale / max(batch_len(batch), 1)) + input_bytes_per_sample(batch)


def _count_outputs(model, forward) -> int:
    import torch

    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                total += tensor.numel() * 4  # kept in fp32 unless autocast halves it
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            forward()
    finally:
        for hook in hooks:
            hook.remove()
    return total


def optimizer_state_copies(optimizer: str, momentum: float) -> int:
    """Tensors the optimizer keeps per parameter: Adam's two moments, SGD's momentum buffer."""
    return {"sgd": 1 if momentum else 0, "adam": 2, "adamw": 2}[optimizer]


def estimate(parameters: int, optimizer: str, momentum: float, per_sample_bytes: int, local_batch: int,
             device_type: str, data_bytes: int = 0) -> MemoryEstimate:
    state = parameters * 4 * (2 + optimizer_state_copies(optimizer, momentum))  # fp32 weights and gradients, then the optimizer's
    return MemoryEstimate(parameters, state, per_sample_bytes, FIXED_BYTES.get(device_type, FIXED_BYTES["cpu"]),
                          local_batch, data_bytes)


def check_fits(est: MemoryEstimate, capacity: int | None, where: str, workers_sharing: int, world: int,
               bigger: str | None) -> None:
    """Exit 2 with the numbers when one worker needs more than it will have."""
    if capacity is None:
        return
    share = capacity // max(workers_sharing, 1)
    if est.per_worker <= share * USABLE:
        return
    fits = est.largest_batch(share)
    global_fits = fits * world
    if fits >= 1:
        advice = f"data.batch_size {global_fits} or less fits"
    elif est.data_bytes > share * USABLE:
        advice = "the dataset alone does not fit (each worker holds all of it)"
    else:
        advice = "not even one sample fits"
    card = f", or a card with more memory ({bigger})" if bigger else ""
    data = f", the dataset {est.data_bytes / GIB:,.1f} GiB" if est.data_bytes >= GIB // 10 else ""
    raise bad_input(f"data.batch_size: {est.local_batch * world} needs ~{est.per_worker / GIB:,.1f} GiB per worker "
                    f"(weights+gradients+optimizer {est.state_bytes / GIB:,.2f} GiB, activations "
                    f"{est.per_sample_bytes * est.local_batch / GIB:,.1f} GiB for {est.local_batch} samples{data}) but "
                    f"{where} has {share / GIB:,.1f} GiB per worker; {advice}{card}")


def describe(est: MemoryEstimate) -> str:
    return (f"~{est.per_worker / 2**20:,.0f} MiB (weights+grads+optimizer {est.state_bytes / 2**20:,.0f} MiB, "
            f"activations {est.per_sample_bytes * est.local_batch / 2**20:,.0f} MiB for {est.local_batch} samples, "
            f"dataset {est.data_bytes / 2**20:,.0f} MiB, runtime {est.fixed_bytes / 2**20:,.0f} MiB)")


def available_ram() -> int | None:
    """This machine's memory that a new process can use (MemAvailable), or None where unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
