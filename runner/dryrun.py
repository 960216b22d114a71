"""`--dry-run`: the promise that a job will start before anything is paid for.

It refuses, with the one line and exit code the real run would give, what would fail where the
job runs: a precision the device lacks (the requested GPU, from the catalog, for remote
backends), data that is neither on disk nor downloaded, a runs folder that cannot be written, a
job too big for the memory it will have. Then it builds the model, takes a few training steps
on this CPU on a small batch (real data where it is here), scales their time to the job's
batch and says how it got every figure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from runner.backends import Plan
from runner.errors import bad_input

DRY_STEPS = 3
TIMING_BATCH = 8  # samples per timed step: enough to time, small enough for under 10 s on 2 cores
REMOTE = ("modal", "vast")  # backends whose job runs on a machine gpujob rents, not this one


@dataclass(frozen=True)
class Target:
    """Where the job will run, as far as its memory and precision go."""

    device: str  # cuda | mps | cpu
    gpu: object | None  # the catalog's GpuType, where known
    capacity: int | None  # bytes one node has for the job's workers (None: unknown)
    where: str  # for messages: "this machine's CPU", "an A10G (24 GB) on Modal"


def dry_run(plan: Plan) -> list[tuple[str, str]]:
    spec = plan.spec
    target = where_it_runs(plan)
    check_precision(spec.train.precision, target)
    data_note = check_data(plan)
    check_runs_dir(plan.runs_dir)
    local_batch = spec.data.batch_size // max(plan.world_size, 1)

    import torch

    from runner.datasets import dataset_info
    from runner.memory import activation_bytes_per_sample, check_fits, describe, estimate
    from runner.models import build_model, parameter_count
    from runner.train import seed_everything

    seed_everything(spec.train.seed)
    info = dataset_info(spec.data)
    if info is None:  # a factory dataset: its shape is known once it is loaded, as the job loads it
        shape, classes, data_source, batches = _data(plan, data_note)
    else:
        shape, classes = info.shape, spec.model.num_classes or info.num_classes

    def fresh_model():
        return build_model(spec.model, shape, classes)

    # First the sizes, from shapes alone: a job too big is refused before anything big is made.
    per_sample = activation_bytes_per_sample(fresh_model, shape, spec.train.precision)
    with torch.device("meta"):
        params = parameter_count(fresh_model())
    est = estimate(params, spec.optimizer.name, spec.optimizer.momentum, per_sample, local_batch, target.device,
                   info.held_bytes if info else 0)
    sharing = plan.world_size // max(spec.resources.nodes, 1) if target.device == "cpu" else 1
    check_fits(est, target.capacity, target.where, sharing, plan.world_size, _bigger_card(target, est))
    if info is not None:
        shape, classes, data_source, batches = _data(plan, data_note)

    timed = min(local_batch, TIMING_BATCH)
    losses, per_step = _timed_steps(spec, fresh_model(), batches, shape, classes, timed)
    scaled = per_step * local_batch / timed
    return plan.describe() + [
        ("model", f"{spec.model.name}: {params:,} parameters"),
        ("data", data_source),
        ("batch", f"{spec.data.batch_size} global, {local_batch} per worker"),
        ("dry steps", f"{DRY_STEPS} on this CPU at {timed} samples, loss {' -> '.join(f'{v:.3f}' for v in losses)}; "
                      f"{per_step * 1000:.0f} ms/step, ~{scaled * 1000:,.0f} ms/step at {local_batch} per worker "
                      "(scaled by batch size; this CPU, not the job's device)"),
        ("memory per worker", f"{describe(est)}, counted from the model's shapes; "
                              f"{target.where}: {_capacity(target)}"),
    ]


def where_it_runs(plan: Plan) -> Target:
    from runner.hardware import cuda_gpus
    from runner.memory import available_ram

    request = plan.spec.resources.gpu_request
    here_on_gpu = plan.backend == "local" or (plan.backend == "docker" and getattr(plan.request.run, "gpus", None))
    if plan.backend in ("local", "docker"):
        gpus = cuda_gpus() if here_on_gpu else []
        if gpus:
            name, memory_gb = gpus[0]
            return Target("cuda", request.type if request else None, int(memory_gb * 1e9), f"this machine's {name}")
        if plan.backend == "local" and _mps():
            return Target("mps", None, available_ram(), "this Mac's GPU (shared memory)")
        return Target("cpu", None, available_ram(), "this machine")
    if request is not None:
        gpu = request.type
        return Target("cuda", gpu, int(gpu.memory_gb * 1e9), f"{gpu.name} ({gpu.memory_gb} GB) on {plan.backend}")
    memory = _slurm_mem(plan.spec.slurm.mem) if plan.backend == "slurm" else None
    return Target("cpu", None, memory, f"a {plan.backend} CPU machine")


def _mps() -> bool:
    import torch

    return torch.backends.mps.is_available()


def _slurm_mem(text: str | None) -> int | None:
    if not text:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = text[:-1], text[-1].upper()
    if unit.isdigit():
        number, unit = text, "M"  # SLURM's default unit
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        return None


def check_precision(precision: str, target: Target) -> None:
    """The same line the run would stop with on that device (runner/train_setup.py)."""
    from runner.train_setup import precision_problem

    card = getattr(target.gpu, "name", None)
    has_bf16 = getattr(target.gpu, "bf16", True)
    problem = precision_problem(precision, target.device, card, has_bf16)
    if problem:
        raise bad_input(problem)


def check_data(plan: Plan) -> str | None:
    """Data that is neither where the job runs nor downloaded stops the job there: say so here."""
    from runner.datasets import DOWNLOADED, on_disk, require_on_disk

    data = plan.spec.data
    if data.dataset not in DOWNLOADED:
        return None
    if plan.backend in REMOTE:
        if not data.download:
            raise bad_input(f"data.download: false, but nothing puts {data.dataset} on {plan.backend}'s machine; "
                            "set data.download: true (it downloads there)")
        return f"the job downloads {data.dataset} on {plan.backend}'s machine"
    if on_disk(data):
        return None
    if not data.download:
        require_on_disk(data)  # raises the run's own message: where the files go
    return f"{data.dataset} is not under {data.root} yet: the job downloads it"


def check_runs_dir(runs_dir: Path) -> None:
    """A runs folder the real run could not create or write into, refused as it would be."""
    path = Path(runs_dir).resolve()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise bad_input(f"--runs-dir: {path} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise bad_input(f"--runs-dir: cannot create {Path(runs_dir)}: {path} is not writable")


def _data(plan: Plan, note: str | None):
    """(shape, classes, how the data was got, a source of batches for the timed steps)."""
    import torch

    from runner.datasets import dataset_info, load_image_tensors, on_disk
    from runner.train_setup import check_labels

    spec = plan.spec
    info = dataset_info(spec.data)
    if info is None:  # a factory dataset: loaded for real, as the job loads it
        from runner.distributed import WorkerContext
        from runner.train_setup import prepare_batches

        batches, shape, classes = prepare_batches(spec, torch.device("cpu"), WorkerContext())
        return shape, classes, f"{spec.data.dataset} (loaded, through its DataLoader)", ("loader", batches)
    classes = spec.model.num_classes or info.num_classes
    if spec.data.dataset == "digits":
        source = "digits (scikit-learn's bundled 8x8 digits; no download)"
    elif spec.data.dataset == "synthetic":
        source = f"synthetic {list(info.shape)} (made by the job itself)"
    else:
        source = f"{spec.data.dataset}, found under {spec.data.root}"
    if spec.data.dataset == "synthetic":  # random by nature: the timed steps make their own
        return info.shape, classes, source, ("random",)
    if note is None and on_disk(spec.data):
        train = load_image_tensors(spec.data, train=True)
        check_labels(train, load_image_tensors(spec.data, train=False), classes)
        return info.shape, classes, source, ("tensors", train, info)
    return info.shape, classes, f"random stand-in of {list(info.shape)}: {note}", ("random",)


def _timed_steps(spec, model, batches, shape, classes, batch: int) -> tuple[list[float], float]:
    """A few optimizer steps on `batch` samples; the time per step, the first (warm-up) left out."""
    import torch
    import torch.nn.functional as F

    from runner.train_setup import build_optimizer

    source = batches[0]
    if source == "loader":
        iterator = iter(batches[1].train(1))
        take = lambda: next(iterator)  # noqa: E731
    elif source == "tensors":
        train, info = batches[1], batches[2]
        scale = torch.tensor(info.std).view(1, -1, 1, 1) * 255.0

        def take():
            idx = torch.randint(0, len(train), (batch,))
            x = (train.images[idx].float() - torch.tensor(info.mean).view(1, -1, 1, 1) * 255.0) / scale
            return x, train.labels[idx]
    else:
        def take():
            return torch.randn(batch, *shape), torch.randint(0, classes, (batch,))

    optimizer, _ = build_optimizer(spec, model, DRY_STEPS)
    losses, times = [], []
    for _ in range(DRY_STEPS):
        x, y = take()
        x, y = x[:batch], y[:batch]
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    steady = times[1:] or times
    return losses, sum(steady) / len(steady)


def _bigger_card(target: Target, est) -> str | None:
    """The smallest catalog card on which one worker fits, for a GPU job."""
    if target.device != "cuda":
        return None
    from runner.gpus import CATALOG
    from runner.memory import USABLE

    fitting = sorted((g for g in CATALOG if g.memory_gb * 1e9 * USABLE >= est.per_worker), key=lambda g: g.memory_gb)
    return f"{fitting[0].name}, {fitting[0].memory_gb} GB" if fitting else None


def _capacity(target: Target) -> str:
    if target.capacity is None:
        return "memory not known here, not checked"
    return f"{target.capacity / 2**30:,.1f} GiB, it fits"
