"""How long a job would take on a GPU it has not run on, and what it would cost: `gpujob estimate`,
the dry run of a job bound for a rented GPU, and the estimate cost.json keeps.

A step costs the longer of its arithmetic (FLOPs counted on the meta device, at a stated share
of the card's dense peak) and its memory traffic (weights, gradients, optimizer state and
activations, at a stated share of the card's bandwidth), plus a fixed cost per kernel launch,
which is what small models on big GPUs are really bound by. DDP adds the gradients' all-reduce
over the card's link. Where a finished run of the same model, data and batch on that GPU type
is in the runs folder, its measured epoch time is used instead, and said to be measured.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# The stated assumptions: shares of the datasheet peaks that a well-fed eager PyTorch training
# step reaches, and the cost of one kernel launch from Python (eager PyTorch, measured in the
# 5-20 microsecond range on current cards). Changing them here changes every estimate.
COMPUTE_EFFICIENCY = 0.40
BANDWIDTH_EFFICIENCY = 0.60
LAUNCH_S = 10e-6
# Each activation is written forward, read by the next layer, read again backward, and its
# gradient written and read: about six passes over it (normalisation and activation layers,
# which do little arithmetic, are bound by exactly this).
ACTIVATION_PASSES = 6
OPTIMIZER_KERNELS = 10  # the optimizer step (fused or foreach): a few launches however many tensors
ASSUMPTIONS = (f"{COMPUTE_EFFICIENCY:.0%} of the dense peak FLOP/s, {BANDWIDTH_EFFICIENCY:.0%} of the memory "
               f"bandwidth, {LAUNCH_S * 1e6:.0f} us per kernel launch; times are training and evaluation, dollars add "
               "the billed start-up")
PLAN_GPUS = ("T4", "L4", "A10G", "A100-80GB", "H100")
# A rented card is billed from its container's start to its end, not only while it trains: the
# container's own start (Modal: "a cold-start time of ~1s", https://modal.com/docs/guide/cold-start)
# and the scale-down window after the call (2 s, Modal's least, which gpujob sets), then inside
# it the job's start-up (imports, data, model, CUDA's context) and its final save.
CONTAINER_START_S = {"modal": 1.0 + 2.0}
# The job's start-up and save where no finished run of it has measured them: the quickstart's
# time to first step measured 2.6-18 s on the 2-core test machine (timing.json), and a GPU adds
# CUDA's context; a finished run of the job replaces this with its own figure.
ASSUMED_JOB_STARTUP_S = 20.0


@dataclass(frozen=True)
class JobShape:
    """What a job asks of any device, counted once from its spec (no data loaded)."""

    name: str
    model: dict
    dataset: str
    shape: tuple
    global_batch: int
    precision: str
    epochs: int
    steps_per_epoch: int
    test_samples: int
    parameters: int
    flops_per_sample: int
    forward_flops_per_sample: int
    kernels: int
    forward_kernels: int
    activation_bytes_per_sample: int
    state_copies: int
    held_bytes: int
    optimizer: str
    momentum: float


@dataclass(frozen=True)
class Estimate:
    gpu: str
    count: int
    epoch_s: float
    total_s: float
    usd_per_hour: float | None
    total_usd: float | None
    price_source: str | None
    startup_s: float  # billed besides training: the container's start, the job's start-up and save
    startup_how: str  # where that figure comes from (a finished run, or the stated assumption)
    training_usd: float | None  # the training and evaluation alone; total_usd adds the start-up
    fits: bool
    memory_bytes: int
    refused: str | None  # why the job cannot run on this card at all (a precision it lacks)
    measured: str | None  # the run folder whose speed was used, where one was
    bound: str  # what limits a step: compute, memory (bandwidth), launch (kernel launches), measured

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DataSample:
    """What an estimate needs of a job's data: the model's input shape and classes, a batch shaped
    as the job's, the splits' sizes, and what each worker holds of it on its device."""

    shape: tuple
    classes: int | None
    batch: object
    train_samples: int
    test_samples: int
    held_bytes: int


def data_sample(spec) -> DataSample:
    """A built-in dataset from its catalog entry (nothing loaded); a factory dataset loaded as the
    job loads it (its length and one batch are all that is kept)."""
    from runner.spec.model import dataset_info
    from runner.training.samples import first_batch, image_batch

    info = dataset_info(spec.data)
    if info is not None:
        classes = spec.model.num_classes or info.num_classes
        return DataSample(info.shape, classes, image_batch(info.shape), info.train_samples, info.test_samples,
                          info.held_bytes)
    import torch

    from runner.training.distributed import WorkerContext
    from runner.training.setup import prepare_batches
    from runner.training.steps import step_for

    classification = step_for(spec).classification
    batches, shape, classes = prepare_batches(spec, torch.device("cpu"), WorkerContext(), classification)
    return DataSample(shape, classes, first_batch(batches), len(batches.train_set), len(batches.test_set), 0)


def job_shape(spec, data: DataSample | None = None) -> JobShape | None:
    """What the job asks of any device, counted on a batch shaped as its own (the dry run passes
    the data it loaded; otherwise a factory dataset is loaded here). None where the model and its
    step cannot be counted."""
    import torch

    from runner.training.flops import count_step
    from runner.training.memory import activation_bytes_per_sample, optimizer_state_copies
    from runner.training.models import build_model, parameter_count
    from runner.training.steps import step_for

    data = data or data_sample(spec)
    step_fn = step_for(spec)
    counted = count_step(spec.model, data.shape, data.classes, data.batch, step_fn)
    if counted is None:
        return None
    with torch.device("meta"):
        params = parameter_count(build_model(spec.model, data.shape, data.classes))
    per_sample = activation_bytes_per_sample(lambda: build_model(spec.model, data.shape, data.classes), data.batch,
                                             spec.train.precision, step_fn)
    steps = data.train_samples // spec.data.batch_size
    if spec.train.max_steps:
        steps = min(steps, math.ceil(spec.train.max_steps / spec.train.epochs))
    copies = optimizer_state_copies(spec.optimizer.name, spec.optimizer.momentum)
    return JobShape(spec.name, spec.model.model_dump(mode="json"), spec.data.dataset, tuple(data.shape),
                    spec.data.batch_size, spec.train.precision, spec.train.epochs, steps, data.test_samples,
                    params, counted.flops_per_sample, counted.forward_flops_per_sample, counted.kernels,
                    counted.forward_kernels, per_sample, copies, data.held_bytes, spec.optimizer.name,
                    spec.optimizer.momentum)


def on_gpu(job: JobShape, gpu, count: int, runs: list | None = None) -> Estimate:
    """The job on `count` cards of catalog type `gpu`."""
    from runner.training.memory import USABLE, estimate as memory_estimate
    from runner.training.setup import precision_problem

    local = max(job.global_batch // count, 1)
    memory = memory_estimate(job.parameters, job.optimizer, job.momentum, job.activation_bytes_per_sample, local,
                             "cuda", job.held_bytes)
    fits = memory.per_worker <= gpu.memory_gb * 1e9 * USABLE
    refused = precision_problem(job.precision, "cuda", gpu.name, gpu.compute_capability)
    measured = _measured(job, gpu, count, runs or [])
    if measured is not None:
        epoch_s, bound, source = measured[0], "measured", measured[1]
    else:
        epoch_s, bound = _modelled_epoch(job, gpu, count, local)
        source = None
    total_s = epoch_s * job.epochs
    price, where = cheapest_price(gpu)
    startup_s, startup_how = billed_startup(job, where, runs or [])
    hourly = price * count if price is not None else None
    training_usd = hourly * total_s / 3600 if hourly is not None else None
    total_usd = hourly * (total_s + startup_s) / 3600 if hourly is not None else None
    return Estimate(gpu.name, count, epoch_s, total_s, hourly, total_usd, where, startup_s, startup_how, training_usd,
                    fits, memory.per_worker, refused, source, bound)


def billed_startup(job: JobShape, provider: str | None, runs: list) -> tuple[float, str]:
    """Seconds a rented card is billed besides training, and where the figure comes from: the
    provider's container start, plus the job's own start-up and save as the latest finished run
    of this model, data and batch measured them (any device), or the stated assumption."""
    container = CONTAINER_START_S.get(provider or "", 0.0)
    for run in runs:
        s, timing = run.summary, run.timing or {}
        model = {k: v for k, v in dict(run.spec.get("model") or {}).items() if v is not None}
        if (s.get("dataset") != job.dataset or s.get("global_batch_size") != job.global_batch
                or model != {k: v for k, v in job.model.items() if v is not None}):
            continue
        if isinstance(timing.get("total_s"), (int, float)) and isinstance(timing.get("train_loop_s"), (int, float)):
            own = max(timing["total_s"] - timing["train_loop_s"], 0.0)
            return container + own, f"start-up and save measured by {run.folder.name}"
    return container + ASSUMED_JOB_STARTUP_S, f"start-up and save assumed {ASSUMED_JOB_STARTUP_S:.0f} s"


def _modelled_epoch(job: JobShape, gpu, count: int, local: int) -> tuple[float, str]:
    peak = gpu.peak_tflops(job.precision) * 1e12 * COMPUTE_EFFICIENCY
    bandwidth = gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    param_bytes = job.parameters * 4
    # Per step: weights read forward and backward, gradients written and read, weights written,
    # each optimizer state read and written; activations as ACTIVATION_PASSES says.
    traffic = param_bytes * (5 + 2 * job.state_copies) + ACTIVATION_PASSES * job.activation_bytes_per_sample * local
    compute_s = job.flops_per_sample * local / peak
    memory_s = traffic / bandwidth
    launch_s = (job.kernels + OPTIMIZER_KERNELS) * LAUNCH_S
    step_s = max(compute_s, memory_s) + launch_s
    bound = max((compute_s, "compute"), (memory_s, "memory"), (launch_s, "launch"))[1]
    if count > 1:  # a ring all-reduce moves 2(n-1)/n of the gradients over each card's link
        step_s += 2 * (count - 1) / count * param_bytes / (gpu.link_gbs * 1e9)
    eval_batches = math.ceil(job.test_samples / count / 1024)
    eval_s = (job.forward_flops_per_sample * job.test_samples / count / peak
              + eval_batches * job.forward_kernels * LAUNCH_S)
    return job.steps_per_epoch * step_s + eval_s, bound


def cheapest_price(gpu) -> tuple[float | None, str | None]:
    """The lowest listed price per card-hour, and whose; None where only a market sets it."""
    listed = sorted((price, provider) for provider, price in gpu.price_per_hour.items())
    paid = [(p, who) for p, who in listed if p > 0] or listed
    if not paid:
        return None, None
    return paid[0]


def _measured(job: JobShape, gpu, count: int, runs: list) -> tuple[float, str] | None:
    """The steady epoch time of a finished run of this job's model, data and batch on `count`
    cards of this type, where the runs folder has one (the latest)."""
    for run in runs:
        s, spec = run.summary, run.spec
        if (s.get("world_size") != count or s.get("precision") != job.precision
                or s.get("global_batch_size") != job.global_batch or s.get("dataset") != job.dataset
                or not str(s.get("device", "")).startswith("cuda")):
            continue
        model = dict(spec.get("model") or {})
        if {k: v for k, v in model.items() if v is not None} != {k: v for k, v in job.model.items() if v is not None}:
            continue
        if not gpu.is_device(s.get("device_name") or "", _memory_gb(run)):
            continue
        seconds = run.epoch_seconds()
        if seconds:
            return seconds, str(run.folder)
    return None


def _memory_gb(run) -> float:
    """The card's memory as the run's env.json recorded it (telling an A100 40 GB from 80 GB)."""
    sizes = (run.env or {}).get("device_memory_gb") or []
    if sizes and isinstance(sizes[0], (int, float)):
        return float(sizes[0])
    return 1e9  # unrecorded: any memory size matches the name


def finished_runs(runs_dir: Path) -> list:
    """Every finished run under runs_dir, newest first (for "measured")."""
    from runner.errors import GpujobError
    from runner.runs.view import load_run

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for folder in sorted(runs_dir.iterdir(), key=lambda p: p.name, reverse=True):
        if (folder / "summary.json").is_file():
            try:
                found.append(load_run(folder))
            except GpujobError:
                continue
    return found


def human_duration(seconds: float) -> str:
    """An estimated duration as said: "~40 s", "~3.5 min", "~2.1 h", "under 1 s"."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.1f} min"
    return f"~{seconds / 3600:.1f} h"


def before_run(spec, runs_dir: Path | None = None) -> dict | None:
    """The estimate a rented job records before it starts (cost.json keeps it beside the cost
    after): None for a CPU job or one that cannot be counted."""
    request = spec.resources.gpu_request
    if request is None:
        return None
    try:
        job = job_shape(spec)
    except Exception:  # data that loads only where the job runs: an estimate is a report, never a reason to fail
        return None
    if job is None:
        return None
    guess = on_gpu(job, request.type, request.count, finished_runs(runs_dir) if runs_dir else [])
    return {"gpu": str(request), "epoch_s": round(guess.epoch_s, 2), "total_s": round(guess.total_s, 1),
            "usd_per_hour": guess.usd_per_hour, "total_usd": None if guess.total_usd is None else round(guess.total_usd, 4),
            "price_source": guess.price_source, "startup_s": round(guess.startup_s, 1),
            "startup_how": guess.startup_how, "how": f"measured by {guess.measured}" if guess.measured else
            f"estimated ({guess.bound}-bound) at {ASSUMPTIONS}"}


def announce(run) -> None:
    """Say the estimate kept in `run`'s record (if any), on stderr: backends that rent call it
    once the service has answered, right before renting."""
    if run.record.estimate:
        print(f"gpujob: {describe_before_run(run.record.estimate)}", file=sys.stderr)


def describe_before_run(record: dict) -> str:
    money = (f", about ${record['total_usd']:.2f} at ${record['usd_per_hour']:.2f}/h"
             + (f" with ~{record['startup_s']:.0f} s of billed start-up" if record.get("startup_s") else "")
             if record.get("total_usd") is not None else "")
    return f"estimate before the run: {human_duration(record['total_s'])} of training on {record['gpu']}{money}"
