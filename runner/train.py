"""The one training function. Every backend ends up here, on whatever device it has.

Read top to bottom: device, seed, data, model, optimizer, then the loop (step,
periodic log, per-epoch evaluation), with honest timing. It knows nothing of Modal,
Docker or SLURM, and writes nothing itself: it hands records to listeners (the run
folder, the console), which exist on rank 0 only.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from runner.batches import LoaderBatches, Shard, TensorBatches
from runner.datasets import dataset_info, load_factory_dataset, load_image_tensors
from runner.distributed import (CommTimer, WorkerContext, all_sum, destroy_process_group, init_process_group,
                                pick_device)
from runner.errors import bad_input, job_failed
from runner.models import build_model, parameter_count

if TYPE_CHECKING:
    import torch

    from runner.spec import JobSpec


class Listener(Protocol):
    def on_start(self, plan: dict) -> None: ...
    def on_step(self, record: dict) -> None: ...
    def on_epoch(self, record: dict) -> None: ...


@dataclass
class TrainResult:
    summary: dict
    timing: dict
    epochs: list[dict] = field(default_factory=list)  # the per-epoch metric records


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(precision: str, device: "torch.device"):
    """The autocast context for `train.precision`, or a clear error where the device lacks it."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16" and device.type == "cpu":
        raise bad_input("train.precision: fp16 needs a CUDA or MPS GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise bad_input(f"train.precision: {name} has no bf16; use fp16 or fp32")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(spec: "JobSpec", model, total_steps: int):
    import torch

    o = spec.optimizer
    params = model.parameters()
    if o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    elif o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    elif o.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=max(total_steps, 1))
    else:
        scheduler = None
    return optimizer, scheduler


def prepare_batches(spec: "JobSpec", device, ctx: WorkerContext):
    """The fast tensor path for builtin datasets, the DataLoader path for factories.
    Returns (batches, shape, num_classes, source) where source says what was read."""
    d = spec.data
    shard = Shard(ctx.rank, ctx.world_size)
    local_batch = d.batch_size // ctx.world_size
    if local_batch * ctx.world_size != d.batch_size:
        raise bad_input(f"data.batch_size: {d.batch_size} does not split evenly over {ctx.world_size} workers")
    info = dataset_info(d)
    if info is not None:
        train_set, test_set = load_image_tensors(d, train=True), load_image_tensors(d, train=False)
        batches = TensorBatches(train_set, test_set, info.mean, info.std, device, d.batch_size, spec.train.seed, shard)
        shape, classes = info.shape, info.num_classes
    else:
        train_set, test_set = load_factory_dataset(d, train=True), load_factory_dataset(d, train=False)
        batches = LoaderBatches(train_set, test_set, device, d.batch_size, spec.train.seed, shard, d.num_workers)
        shape = tuple(train_set[0][0].shape)
        classes = getattr(train_set, "num_classes", None) or spec.model.num_classes
        if classes is None:
            raise bad_input("model.num_classes: required for a factory dataset without a num_classes attribute")
    if batches.steps_per_epoch == 0:
        raise bad_input(f"data.batch_size: {d.batch_size} is larger than the training set ({len(train_set)} samples)")
    return batches, shape, spec.model.num_classes or classes


def sync(device) -> None:
    """Wait for queued device work, so a clock read after it is honest (CUDA is async)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def evaluate(model, batches, autocast, ctx: WorkerContext, device) -> tuple[float, float]:
    """Test loss and accuracy over the whole test split, summed across ranks."""
    import torch
    import torch.nn.functional as F

    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with torch.no_grad(), autocast():
        for x, y in batches.test():
            out = model(x)
            totals[0] += F.cross_entropy(out.float(), y, reduction="sum").double()
            totals[1] += (out.argmax(1) == y).sum()
            totals[2] += len(y)
    loss_sum, correct, count = all_sum(totals, ctx).tolist()
    model.train()
    return loss_sum / count, correct / count


def train(spec: "JobSpec", ctx: WorkerContext | None = None, listeners: list[Listener] = (),
          started: float | None = None, device: "torch.device | None" = None) -> TrainResult:
    import torch
    import torch.nn.functional as F

    started = time.perf_counter() if started is None else started
    ctx = ctx or WorkerContext()
    device = device or pick_device(ctx)
    init_process_group(ctx, device, spec.train.collective_timeout_s)
    try:
        return _train(spec, ctx, listeners, started, device, torch, F)
    finally:
        destroy_process_group(ctx)


def _train(spec, ctx, listeners, started, device, torch, F) -> TrainResult:
    t = spec.train
    seed_everything(t.seed)
    autocast = autocast_for(t.precision, device)
    batches, shape, num_classes = prepare_batches(spec, device, ctx)

    model = build_model(spec.model, shape, num_classes).to(device)
    params = parameter_count(model)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = min(t.max_steps or math.inf, t.epochs * steps_per_epoch)
    optimizer, scheduler = build_optimizer(spec, model, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    step_model = torch.compile(model) if t.compile else model
    comm = CommTimer()
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
        comm.attach(step_model)

    def emit(kind: str, record: dict) -> None:
        for listener in listeners:
            getattr(listener, f"on_{kind}")(record)

    emit("start", {"epochs": t.epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                   "device": str(device), "world_size": ctx.world_size, "parameters": params})
    local_batch = spec.data.batch_size // ctx.world_size
    step, time_to_first_step = 0, None
    epoch_records, epoch_timing = [], []
    train_loop_s = 0.0
    model.train()
    for epoch in range(1, t.epochs + 1):
        epoch_start = time.perf_counter()
        data_s = 0.0
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        window_loss = torch.zeros((), dtype=torch.float64, device=device)
        epoch_steps = window_steps = 0
        window_start = epoch_start
        batch_iter = iter(batches.train(epoch))
        while step < total_steps:
            fetch_start = time.perf_counter()
            batch = next(batch_iter, None)
            data_s += time.perf_counter() - fetch_start
            if batch is None:
                break
            x, y = batch
            with autocast():
                loss = F.cross_entropy(step_model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            detached = loss.detach()
            epoch_loss += detached
            window_loss += detached
            step += 1
            epoch_steps += 1
            window_steps += 1
            if time_to_first_step is None:
                sync(device)
                time_to_first_step = time.perf_counter() - started
            if step % t.log_every_steps == 0:
                # A sync point: reading the loss waits for the device (and, in DDP, the other ranks).
                loss_now = all_sum(window_loss.clone(), ctx).item() / (window_steps * ctx.world_size)
                now = time.perf_counter()
                emit("step", {"kind": "step", "step": step, "epoch": epoch, "loss": loss_now,
                              "lr": optimizer.param_groups[0]["lr"],
                              "samples_per_s": window_steps * spec.data.batch_size / max(now - window_start, 1e-9)})
                window_loss.zero_()
                window_steps, window_start = 0, now
        if epoch_steps == 0:
            break  # max_steps was reached at the end of the previous epoch
        sync(device)
        comm.wait_for_all(ctx)
        epoch_wall = time.perf_counter() - epoch_start
        train_loop_s += epoch_wall
        train_loss = all_sum(epoch_loss, ctx).item() / (epoch_steps * ctx.world_size)
        if not math.isfinite(train_loss):
            raise job_failed(f"training diverged: loss is {train_loss} in epoch {epoch}; lower optimizer.lr")
        eval_start = time.perf_counter()
        test_loss, test_accuracy = evaluate(model, batches, autocast, ctx, device)
        eval_s = time.perf_counter() - eval_start
        samples_per_s = epoch_steps * spec.data.batch_size / epoch_wall
        record = {"kind": "epoch", "step": step, "epoch": epoch, "loss": train_loss,
                  "lr": optimizer.param_groups[0]["lr"], "samples_per_s": samples_per_s,
                  "test_loss": test_loss, "test_accuracy": test_accuracy, "wall_s": epoch_wall}
        epoch_records.append(record)
        epoch_timing.append({"epoch": epoch, "wall_s": epoch_wall, "data_s": data_s,
                             "compute_s": max(epoch_wall - data_s, 0.0), "eval_s": eval_s,
                             "samples_per_s": samples_per_s, **comm.take()})
        emit("epoch", record)
        if step >= total_steps:
            break

    total_s = time.perf_counter() - started
    last = epoch_records[-1]
    samples_per_s = step * spec.data.batch_size / max(train_loop_s, 1e-9)
    summary = {
        "name": spec.name, "model": spec.model.name, "dataset": spec.data.dataset,
        "train_loss": last["loss"], "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
        "epochs": len(epoch_records), "steps": step, "wall_s": total_s, "samples_per_s": samples_per_s,
        "per_worker_samples_per_s": samples_per_s / ctx.world_size, "device": str(device),
        "device_name": device_name(device), "world_size": ctx.world_size, "precision": t.precision,
        "parameters": params, "global_batch_size": spec.data.batch_size, "local_batch_size": local_batch,
    }
    timing = {"time_to_first_step_s": time_to_first_step, "total_s": total_s,
              "train_loop_s": train_loop_s, "epochs": epoch_timing}
    return TrainResult(summary, timing, epoch_records)


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()
