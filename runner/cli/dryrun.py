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

from runner.backends.base import Plan, Target
from runner.backends.registry import get_backend
from runner.errors import bad_input

DRY_STEPS = 3
TIMING_BATCH = 8  # samples per timed step: enough to time, small enough for under 10 s on 2 cores


def dry_run(plan: Plan) -> list[tuple[str, str]]:
    spec = plan.spec
    target = get_backend(plan.backend).target(plan)
    check_precision(spec.train.precision, target)
    data_note = check_data(plan)
    check_runs_dir(plan.runs_dir)
    local_batch = spec.data.batch_size // max(plan.world_size, 1)

    import torch

    from runner.spec.model import dataset_info
    from runner.training.memory import activation_bytes_per_sample, check_fits, estimate
    from runner.training.samples import first_batch, image_batch
    from runner.training.models import build_model, parameter_count
    from runner.training.steps import step_for
    from runner.training.loop import seed_everything

    step_fn = step_for(spec)  # train.step imported and its signature checked before anything is loaded
    _check_shipped_code(plan)
    seed_everything(spec.train.seed)
    info = dataset_info(spec.data)
    if info is None:  # a factory dataset: its shape is known once it is loaded, as the job loads it
        shape, classes, data_source, batches = _data(plan, data_note, step_fn.classification)
    else:
        shape, classes = info.shape, spec.model.num_classes or info.num_classes

    def fresh_model():
        return build_model(spec.model, shape, classes)

    # First the sizes, from shapes alone: a job too big is refused before anything big is made. The
    # batch counted is shaped as the job's: the user's own where the data is theirs (any structure).
    example = image_batch(shape) if info is not None else first_batch(batches[1])
    per_sample = _users_code(spec, step_fn, lambda: activation_bytes_per_sample(fresh_model, example,
                                                                                spec.train.precision, step_fn))
    with torch.device("meta"):
        params = parameter_count(fresh_model())
    est = estimate(params, spec.optimizer.name, spec.optimizer.momentum, per_sample, local_batch, target.device,
                   info.held_bytes if info else 0)
    sharing = plan.world_size // max(spec.resources.nodes, 1) if target.device == "cpu" else 1
    check_fits(est, target.capacity, target.where, sharing, plan.world_size, _bigger_card(target, est))
    if info is not None:
        shape, classes, data_source, batches = _data(plan, data_note, step_fn.classification)

    timed = min(local_batch, TIMING_BATCH)
    model = fresh_model()
    times = _timed_steps(spec, model, batches, shape, classes, timed, step_fn)
    rows = plan.describe() + _figure_rows(spec, params, data_source, local_batch, timed, times, est, target)
    whole_job = whole_job_estimate(plan, target, model, batches, shape, classes, times, _sizes(spec, batches, info),
                                   step_fn, example)
    if whole_job:
        rows.append(("estimate", whole_job))
    return rows


def _figure_rows(spec, params: int, data_source: str, local_batch: int, timed: int, times, est,
                 target: Target) -> list[tuple[str, str]]:
    """What the dry run found, each figure with how it was got."""
    from runner.training.memory import describe

    scaled = times.per_step * local_batch / timed
    return [
        ("model", f"{spec.model.name}: {params:,} parameters"),
        ("data", data_source),
        ("batch", f"{spec.data.batch_size} global, {local_batch} per worker"),
        ("dry steps", f"{DRY_STEPS} on this CPU at {timed} samples, loss "
                      f"{' -> '.join(f'{v:.3f}' for v in times.losses)}; {times.per_step * 1000:.0f} ms/step, "
                      f"~{scaled * 1000:,.0f} ms/step at {local_batch} per worker "
                      "(scaled by batch size; this CPU, not the job's device)"),
        ("memory per worker", f"{describe(est)}, counted from the model's shapes; "
                              f"{target.where}: {_capacity(target)}"),
    ]


def check_precision(precision: str, target: Target) -> None:
    """The same line the run would stop with on that device (runner/train_setup.py): the card the
    catalog names for the job, or this machine's own card where the job takes whatever is here."""
    from runner.training.setup import precision_problem

    card, capability = getattr(target.gpu, "name", None), getattr(target.gpu, "compute_capability", None)
    if target.device == "cuda" and target.gpu is None:
        import torch

        from runner.training.setup import cuda_capability

        card, capability = torch.cuda.get_device_name(0), cuda_capability(torch.device("cuda", 0))
    problem = precision_problem(precision, target.device, card, capability)
    if problem:
        raise bad_input(problem)


def check_data(plan: Plan) -> str | None:
    """Data that is neither where the job runs nor downloaded stops the job there: say so here."""
    from runner.spec.datasets import DOWNLOADED
    from runner.training.datasets import download_source_problem, on_disk, require_on_disk, where_files_go

    data = plan.spec.data
    if data.dataset not in DOWNLOADED:
        return None
    if not get_backend(plan.backend).folder_is_here:  # the job runs where gpujob cannot look
        if not data.download:
            raise bad_input(f"data.download: false, but nothing puts {data.dataset} on {plan.backend}'s machine; "
                            "set data.download: true (it downloads there)")
        return f"the job downloads {data.dataset} on {plan.backend}'s machine"
    if on_disk(data):
        return None
    if not data.download:
        require_on_disk(data)  # raises the run's own message: where the files go
    problem = download_source_problem(data)
    if problem:  # the run would fail at its download: say it now, as it would
        raise bad_input(f"data.download: {data.dataset} is not under {Path(data.root).resolve()} and its source does "
                        f"not answer from here ({problem}); {where_files_go(data)}")
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


def _data(plan: Plan, note: str | None, classification: bool = True):
    """(shape, classes, how the data was got, a source of batches for the timed steps)."""
    import torch

    from runner.spec.model import dataset_info
    from runner.training.datasets import load_image_tensors, on_disk
    from runner.training.setup import check_labels

    spec = plan.spec
    info = dataset_info(spec.data)
    if info is None:  # a factory dataset: loaded for real, as the job loads it
        from runner.training.distributed import WorkerContext
        from runner.training.setup import prepare_batches

        batches, shape, classes = prepare_batches(spec, torch.device("cpu"), WorkerContext(), classification)
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
        train, test = load_image_tensors(spec.data, train=True), load_image_tensors(spec.data, train=False)
        if classification:
            check_labels(train, test, classes)
        return info.shape, classes, source, ("tensors", train, info, len(test))
    return info.shape, classes, f"random stand-in of {list(info.shape)}: {note}", ("random",)


@dataclass
class StepTimes:
    losses: list[float]
    per_step: float  # seconds per optimizer step at `batch` samples, the warm-up step left out
    batch: int
    data_per_sample: float  # seconds to make one sample's input, as the job's batches do
    spread: float = 1.0  # the slowest timed step over the fastest (1: steady)


def _batch_source(batches, shape, classes, batch: int):
    """A function giving (x, y) of `batch` samples, made the way the job makes them."""
    import torch

    source = batches[0]
    if source == "loader":
        iterator = iter(batches[1].train(1))
        return lambda: next(iterator)
    if source == "tensors":
        train, info = batches[1], batches[2]
        scale = torch.tensor(info.std).view(1, -1, 1, 1) * 255.0
        mean = torch.tensor(info.mean).view(1, -1, 1, 1) * 255.0

        def take():
            idx = torch.randint(0, len(train), (batch,))
            return (train.images[idx].float() - mean) / scale, train.labels[idx]
        return take
    return lambda: (torch.randn(batch, *shape), torch.randint(0, classes, (batch,)))


def _timed_steps(spec, model, batches, shape, classes, batch: int, step_fn, steps: int = DRY_STEPS) -> StepTimes:
    """A few optimizer steps on `batch` samples through the job's step (the user's train.step:
    what it returns is checked here); the time per step, the first (warm-up) left out."""
    from runner.training.steps import batch_len, head
    from runner.training.setup import build_optimizer

    take = _batch_source(batches, shape, classes, batch)
    optimizer, _ = build_optimizer(spec, model, steps)
    losses, times, fetches = [], [], []
    for _ in range(steps):
        fetch = time.perf_counter()
        whole = take()
        start = time.perf_counter()
        fetches.append((start - fetch) / batch_len(whole))  # a loader's batch may be bigger than the timed one
        loss, _ = _one_step(step_fn, model, head(whole, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    steady, fetched = times[1:] or times, fetches[1:] or fetches
    return StepTimes(losses, sum(steady) / len(steady), batch, sum(fetched) / len(fetched),
                     max(steady) / max(min(steady), 1e-9))


def _check_shipped_code(plan: Plan) -> None:
    """The user's code, copied as the backend will ship it, imports from that copy alone."""
    if plan.code is not None and plan.ships_code:
        plan.code.check_a_copy()


def _users_code(spec, step_fn, work):
    """work(), which runs the user's model or step: what it raises is the spec's problem, found
    before anything is paid for, in one line naming the field (never a traceback)."""
    from runner.errors import GpujobError

    try:
        return work()
    except GpujobError:
        raise
    except Exception as err:
        said = str(err).splitlines()[0] if str(err) else ""
        if not step_fn.classification:
            raise bad_input(f"train.step: {step_fn.path} raised {type(err).__name__} on one batch of the data: "
                            f"{said}".rstrip(": ")) from None
        raise bad_input(f"model.name: {spec.model.name} raised {type(err).__name__} on one batch of the data: "
                        f"{said}".rstrip(": ")) from None


def _one_step(step_fn, model, batch):
    """The job's step on one batch. A user's step that raises is the spec's problem here, found
    before anything is paid for: one line naming train.step."""
    from runner.errors import GpujobError

    if step_fn.classification:
        return step_fn(model, batch)
    try:
        return step_fn(model, batch)
    except GpujobError:
        raise
    except Exception as err:
        from runner.errors import bad_input

        raise bad_input(f"train.step: {step_fn.path} raised {type(err).__name__} on one batch of the data: "
                        f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")) from None


def _timed_evaluation(model, step_fn, batch, n: int, repeats: int = 2) -> float:
    """Seconds for the job's step on `n` samples of `batch` without gradients (what evaluation
    does), warmed up."""
    import torch

    from runner.training.steps import head

    batch = head(batch, n)
    model.eval()
    with torch.no_grad():
        step_fn(model, batch)
        start = time.perf_counter()
        for _ in range(repeats):
            step_fn(model, batch)
    model.train()
    return (time.perf_counter() - start) / repeats


@dataclass(frozen=True)
class Sizes:
    steps_per_epoch: int
    test_samples: int
    held_bytes: int = 0  # what each worker holds of the dataset on its device (built-in datasets)


def _sizes(spec, batches, info) -> Sizes:
    """The job's steps per epoch and test samples, from the data as loaded where it was."""
    import math

    if batches[0] == "loader":
        loader = batches[1]
        return Sizes(loader.steps_per_epoch, len(loader.test_set))
    if batches[0] == "tensors":
        return Sizes(len(batches[1]) // spec.data.batch_size, batches[3], info.held_bytes)
    steps = info.train_samples // spec.data.batch_size
    if spec.train.max_steps:
        steps = min(steps, math.ceil(spec.train.max_steps / spec.train.epochs))
    return Sizes(steps, info.test_samples, info.held_bytes)


FIT_FLOPS = 2e10  # the second timing point's budget: about half a second of a laptop core's arithmetic


def whole_job_estimate(plan: Plan, target: Target, model, batches, shape, classes, times: StepTimes,
                       sizes: Sizes, step_fn, example) -> str | None:
    """Seconds per epoch and for the whole job, and dollars where the job rents: on this CPU from
    timed steps at two batch sizes (a step's fixed cost and its cost per sample), on a GPU from
    the catalog (runner/estimate.py)."""
    from runner.reports.estimate import human_duration

    spec = plan.spec
    if target.device == "cuda" and target.gpu is not None:
        from runner.reports.estimate import ASSUMPTIONS, DataSample, finished_runs, job_shape, on_gpu
        from runner.reports.targets import check_budget, target_note

        job = job_shape(spec, DataSample(shape, classes, example, sizes.steps_per_epoch * spec.data.batch_size,
                                         sizes.test_samples, sizes.held_bytes))
        if job is None:
            return None
        count = spec.resources.gpu_request.count if spec.resources.gpu_request else 1
        guess = on_gpu(job, target.gpu, count, finished_runs(plan.runs_dir))
        check_budget(spec, guess)
        money = (f", about ${guess.total_usd:.2f} at ${guess.usd_per_hour:.2f}/h ({guess.price_source.split()[0]}) "
                 f"with ~{guess.startup_s:.0f} s of billed start-up ({guess.startup_how})"
                 if guess.total_usd is not None and guess.price_source is not None  # the catalog's price and where
                 else ", at the offer's price per hour")
        return (f"~{guess.epoch_s:,.1f} s per epoch, {human_duration(guess.total_s)} for {spec.train.epochs} epoch(s) "
                f"on {target.gpu.name} x{count}{money}; from the catalog at {ASSUMPTIONS}"
                + target_note(spec, guess.epoch_s, guess.usd_per_hour, guess.startup_s, plan.runs_dir))
    if target.device != "cpu" or not target.here:
        return None
    from runner.training.flops import training_flops_per_sample

    local = spec.data.batch_size  # W workers on one CPU split its cores and the batch: about one worker at all of it
    flops = training_flops_per_sample(spec.model, shape, classes, example, step_fn) or 0
    bigger = min(local, max(times.batch * 4, 1), int(FIT_FLOPS // flops) if flops else local)
    step = times.per_step * local / times.batch
    how = "scaled by batch size"
    if bigger >= times.batch * 2:
        second = _timed_steps(spec, model, batches, shape, classes, bigger, step_fn, steps=2)
        per_sample = max((second.per_step - times.per_step) / (bigger - times.batch), 0.0)
        fixed = max(times.per_step - per_sample * times.batch, 0.0)
        step = fixed + per_sample * local
        how = f"timed at {times.batch} and {bigger} samples: {fixed * 1000:.1f} ms a step + " \
              f"{per_sample * 1e6:,.0f} us a sample"
    eval_batch = min(1024, max(sizes.test_samples, 1))
    timed_eval = min(eval_batch, bigger)
    eval_s = _timed_evaluation(model, step_fn, _batch_source(batches, shape, classes, timed_eval)(),
                               timed_eval) * eval_batch / timed_eval
    evals = -(-sizes.test_samples // 1024) * eval_s
    epoch_s = sizes.steps_per_epoch * (step + times.data_per_sample * local) + evals
    total = epoch_s * spec.train.epochs
    from runner.reports.targets import target_note

    return (f"~{epoch_s:,.1f} s per epoch, {human_duration(total)} for {spec.train.epochs} epoch(s) on this CPU "
            f"({sizes.steps_per_epoch} steps; {how}); start-up not included{_doubts(times)}"
            + target_note(spec, epoch_s, None, 0.0, plan.runs_dir))


BUSY_LOAD_PER_CORE = 1.0  # runnable processes per core (1-minute load average) past which this CPU is shared
UNSTEADY_SPREAD = 2.0  # the slowest timed step over the fastest, past which a few steps say little


def _doubts(times: StepTimes) -> str:
    """Why a figure timed on this CPU may be far off, or "": a busy machine (other processes
    take the cores the timed steps needed: seen 15-100x slower at load 3-8 on 2 cores), or timed
    steps that varied."""
    from runner.training.threads import cores_available, machine_load

    cores, load = cores_available(), machine_load()
    reasons = []
    if load > cores * BUSY_LOAD_PER_CORE:
        reasons.append(f"this machine is busy (load {load:.1f} on {cores} core(s))")
    if times.spread > UNSTEADY_SPREAD:
        reasons.append(f"the timed steps varied {times.spread:.1f}x")
    if not reasons:
        return ""
    return (f"; UNRELIABLE: {' and '.join(reasons)}, so the job may run several times faster; "
            "run the dry run again on a quiet machine")


def _bigger_card(target: Target, est) -> str | None:
    """The smallest catalog card on which one worker fits, for a GPU job."""
    if target.device != "cuda":
        return None
    from runner.gpus import CATALOG
    from runner.training.memory import USABLE

    fitting = sorted((g for g in CATALOG if g.memory_gb * 1e9 * USABLE >= est.per_worker), key=lambda g: g.memory_gb)
    return f"{fitting[0].name}, {fitting[0].memory_gb} GB" if fitting else None


def _capacity(target: Target) -> str:
    if target.capacity is None:
        return "memory not known here, not checked"
    return f"{target.capacity / 2**30:,.1f} GiB, it fits"
