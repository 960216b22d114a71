"""The one training function. Every backend ends up here, on whatever device it has.

Read top to bottom: device, seed, data, model, optimizer, then the loop (step, periodic
log, checkpoint, per-epoch evaluation), with honest timing. It knows nothing of Modal,
Docker or SLURM, and writes nothing but checkpoints: it hands records to listeners (the
run folder, the console), which exist on rank 0 only, and returns the final weights.

Resuming is exact: a checkpoint holds the model, optimizer, scheduler, scaler, RNG
states, the position in the epoch's fixed batch order and every running sum, so a run
killed and resumed takes the same steps on the same batches as one that never stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

from runner.checkpoint import CheckpointStore, restore_rng_states, rng_states
from runner.distributed import (CommTimer, WorkerContext, all_sum, broadcast_object, destroy_process_group,
                                init_process_group, pick_device)
from runner.errors import bad_input, job_failed
from runner.models import build_model, parameter_count
from runner.stop_signals import StopRequest, Stopped
from runner.train_setup import (autocast_for, build_optimizer, device_name, prepare_batches, seed_everything,
                                sync)

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
    weights: dict | None = None  # the final model state (rank 0), for model.pt


@dataclass
class LoopState:
    """Where the loop is and what it has summed so far; saved whole in every checkpoint."""

    epoch: int = 1
    batches_done: int = 0  # of this epoch's fixed batch order
    step: int = 0
    epoch_loss: float = 0.0  # sums of per-step mean losses (float64, so resumed sums are exact)
    epoch_steps: int = 0
    window_loss: float = 0.0
    window_steps: int = 0
    epoch_train_s: float = 0.0  # training time of this epoch before an interruption
    epoch_data_s: float = 0.0
    train_loop_s: float = 0.0
    time_to_first_step_s: float | None = None
    records_emitted: int = 0  # metrics.jsonl lines written up to this checkpoint
    epoch_records: list = field(default_factory=list)
    epoch_timing: list = field(default_factory=list)
    resumed: int = 0
    interruptions: list = field(default_factory=list)


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
          started: float | None = None, checkpoints: CheckpointStore | None = None,
          resume_from: dict | None = None, device: "torch.device | None" = None) -> TrainResult:
    """Train `spec`. `checkpoints` (rank 0) is where checkpoints go; `resume_from` (rank 0)
    a loaded checkpoint to continue from: every rank receives it from rank 0."""
    started = time.perf_counter() if started is None else started
    ctx = ctx or WorkerContext()
    device = device or pick_device(ctx)
    init_process_group(ctx, device, spec.train.collective_timeout_s)
    # One process alone keeps its own time limit; several are stopped by their launcher (or SLURM).
    limit_s = None if ctx.distributed else spec.resources.timeout_minutes * 60 - (time.perf_counter() - started)
    try:
        with StopRequest(limit_s) as stop:
            return _train(spec, ctx, listeners, started, device, checkpoints, resume_from, stop)
    finally:
        destroy_process_group(ctx)


def _train(spec, ctx, listeners, started, device, checkpoints, resume_from, stop) -> TrainResult:
    import torch
    import torch.nn.functional as F

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

    state = LoopState()
    resume_from = broadcast_object(resume_from, ctx)  # every rank loads what rank 0 read
    if resume_from is not None:
        try:
            model.load_state_dict(resume_from["model"])
        except RuntimeError:  # a checkpoint from before checkpoints kept their spec
            raise bad_input("the run's spec no longer matches its checkpoint (the model's weights do not fit "
                            "it); put the spec back as it was, or start a new run") from None
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume_from["scheduler"])
        scaler.load_state_dict(resume_from["scaler"])
        restore_rng_states(resume_from["rng"])
        state = LoopState(**resume_from["loop"])
        if not ctx.is_main:  # the checkpoint holds every rank's loss sums on rank 0
            state.epoch_loss = state.window_loss = 0.0
        saved_world = resume_from.get("world_size", ctx.world_size)
        if saved_world != ctx.world_size and ctx.is_main:
            # The sums add each rank's mean loss per step: W of them. Rescaled to the new W, the
            # epoch's mean comes out as if every step had been taken at this size (the global
            # batch, and so the maths, is the same at any worker count).
            state.epoch_loss *= ctx.world_size / saved_world
            state.window_loss *= ctx.world_size / saved_world
            print(f"gpujob: resuming with {ctx.world_size} worker(s), the checkpoint was written by {saved_world}: "
                  f"the global batch stays {spec.data.batch_size}", file=sys.stderr)
        state.resumed += 1
        state.interruptions.append({"resumed_at_step": state.step, "epoch": state.epoch})

    step_model = torch.compile(model) if t.compile else model
    comm = CommTimer()
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
        comm.attach(step_model)

    def emit(kind: str, record: dict) -> None:
        state.records_emitted += 1
        for listener in listeners:
            getattr(listener, f"on_{kind}")(record)

    def save_checkpoint() -> None:
        if checkpoints is None:
            return
        checkpoints.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "rng": rng_states(), "loop": asdict(state),
            "world_size": ctx.world_size, "spec": spec.model_dump(mode="json"),
        }, state.step)

    def check_finite(value: float, what: str) -> None:
        if t.stop_on_nan and not math.isfinite(value):
            kept = checkpoints.paths()[0].name if checkpoints and checkpoints.paths() else "none yet"
            raise job_failed(f"{what} became {value} by step {state.step} (epoch {state.epoch}); "
                             f"stopped (train.stop_on_nan). Last good checkpoint: {kept}. Try a lower optimizer.lr")

    for listener in listeners:
        listener.on_start({"epochs": t.epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                           "device": str(device), "world_size": ctx.world_size, "parameters": params,
                           "resumed_at_step": state.step if state.resumed else None})
    checkpoint_every_s = t.checkpoint_every_minutes * 60
    last_checkpoint = time.perf_counter()
    # In DDP every rank must agree to stop (or checkpoint) at the same step; asking costs a sync,
    # so ask every few steps.
    decide_every = 1 if not ctx.distributed else 10

    def decide() -> tuple[bool, bool]:
        """(stop, checkpoint now), the same on every rank: rank 0's clock says when one is due."""
        due = ctx.is_main and time.perf_counter() - last_checkpoint >= checkpoint_every_s
        if not ctx.distributed:
            return stop.requested, due
        flags = all_sum(torch.tensor([float(stop.requested), float(due)], device=device), ctx)
        return flags[0].item() > 0, flags[1].item() > 0

    def sums_onto_main(*sums: "torch.Tensor") -> list[float]:
        """Move every rank's running loss sums onto rank 0 (the total is unchanged), so the
        checkpoint rank 0 writes holds all of them and a resumed run continues the same sums."""
        totals = all_sum(torch.stack(sums), ctx)
        check_finite(totals[-1].item() / max(state.window_steps * ctx.world_size, 1), "the training loss")
        local = totals if ctx.is_main else torch.zeros_like(totals)
        for tensor, value in zip(sums, local):
            tensor.copy_(value)
        return local.tolist()
    model.train()
    # An epoch whose steps are all taken is still closed (evaluated, recorded) after a resume from
    # a checkpoint written between its last step and its end.
    while state.epoch <= t.epochs and (state.step < total_steps or state.epoch_steps > 0):
        epoch = state.epoch
        epoch_start = time.perf_counter() - state.epoch_train_s
        # Throughput over the steps since this clock started (the loss window may span epochs,
        # the clock restarts with each: evaluation time is not training time).
        window_start, rate_steps = time.perf_counter(), 0
        data_s = state.epoch_data_s
        epoch_loss = torch.tensor(state.epoch_loss, dtype=torch.float64, device=device)
        window_loss = torch.tensor(state.window_loss, dtype=torch.float64, device=device)
        batch_iter = iter(batches.train(epoch, skip=state.batches_done))
        while state.step < total_steps:
            fetch_start = time.perf_counter()
            batch = next(batch_iter, None)
            data_s += time.perf_counter() - fetch_start
            if batch is None:
                break
            x, y = batch
            with autocast():
                try:
                    loss = F.cross_entropy(step_model(x), y)
                except IndexError as err:  # a dataset whose labels could not be checked when it loaded
                    if "out of bounds" not in str(err):
                        raise
                    raise bad_input(f"model.num_classes: {num_classes}, but a batch has a label past it ({err}); "
                                    f"labels must be 0 to {num_classes - 1}") from None
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            detached = loss.detach()
            epoch_loss += detached
            window_loss += detached
            state.step += 1
            state.batches_done += 1
            state.epoch_steps += 1
            state.window_steps += 1
            rate_steps += 1
            if state.time_to_first_step_s is None:
                sync(device)
                state.time_to_first_step_s = time.perf_counter() - started
            if state.step % t.log_every_steps == 0:
                # A sync point: reading the loss waits for the device (and, in DDP, the other ranks).
                loss_now = all_sum(window_loss.clone(), ctx).item() / (state.window_steps * ctx.world_size)
                check_finite(loss_now, "the training loss")
                now = time.perf_counter()
                emit("step", {"kind": "step", "step": state.step, "epoch": epoch, "loss": loss_now,
                              "lr": optimizer.param_groups[0]["lr"],
                              "samples_per_s": rate_steps * spec.data.batch_size / max(now - window_start, 1e-9)})
                window_loss.zero_()
                state.window_steps, window_start, rate_steps = 0, now, 0
            stopping, due = decide() if state.step % decide_every == 0 else (False, False)
            if stopping or due:
                state.epoch_loss, state.window_loss = sums_onto_main(epoch_loss, window_loss)
                state.epoch_train_s, state.epoch_data_s = time.perf_counter() - epoch_start, data_s
                save_checkpoint()
                last_checkpoint = time.perf_counter()
                if stopping:
                    raise Stopped(stop.signum or 15, state.step)
        if state.epoch_steps == 0:
            break
        sync(device)
        comm.wait_for_all(ctx)
        epoch_wall = time.perf_counter() - epoch_start
        state.train_loop_s += epoch_wall
        train_loss = all_sum(epoch_loss, ctx).item() / (state.epoch_steps * ctx.world_size)
        check_finite(train_loss, "the epoch's training loss")
        eval_start = time.perf_counter()
        test_loss, test_accuracy = evaluate(model, batches, autocast, ctx, device)
        eval_s = time.perf_counter() - eval_start
        samples_per_s = state.epoch_steps * spec.data.batch_size / epoch_wall
        record = {"kind": "epoch", "step": state.step, "epoch": epoch, "loss": train_loss,
                  "lr": optimizer.param_groups[0]["lr"], "samples_per_s": samples_per_s,
                  "test_loss": test_loss, "test_accuracy": test_accuracy, "wall_s": epoch_wall}
        state.epoch_records.append(record)
        state.epoch_timing.append({"epoch": epoch, "wall_s": epoch_wall, "data_s": data_s,
                                   "compute_s": max(epoch_wall - data_s, 0.0), "eval_s": eval_s,
                                   "samples_per_s": samples_per_s, **comm.take()})
        emit("epoch", record)
        # The next epoch starts from zero; a checkpoint taken now resumes there.
        state.epoch, state.batches_done = epoch + 1, 0
        state.epoch_loss, state.epoch_steps, state.epoch_train_s, state.epoch_data_s = 0.0, 0, 0.0, 0.0
        state.window_loss = window_loss.item()
        if decide()[1]:
            (state.window_loss,) = sums_onto_main(window_loss)
            save_checkpoint()
            last_checkpoint = time.perf_counter()

    if not state.epoch_records:
        raise job_failed("no epoch finished: nothing to report")
    save_checkpoint()  # the final state: resuming a finished run has nothing left to do
    total_s = time.perf_counter() - started
    last = state.epoch_records[-1]
    samples_per_s = state.step * spec.data.batch_size / max(state.train_loop_s, 1e-9)
    summary = {
        "name": spec.name, "model": spec.model.name, "dataset": spec.data.dataset,
        "train_loss": last["loss"], "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
        "epochs": len(state.epoch_records), "steps": state.step, "wall_s": total_s, "samples_per_s": samples_per_s,
        "per_worker_samples_per_s": samples_per_s / ctx.world_size, "device": str(device),
        "device_name": device_name(device), "world_size": ctx.world_size, "precision": t.precision,
        "parameters": params, "global_batch_size": spec.data.batch_size,
        "local_batch_size": spec.data.batch_size // ctx.world_size, "resumed": state.resumed,
    }
    timing = {"time_to_first_step_s": state.time_to_first_step_s, "total_s": total_s,
              "train_loop_s": state.train_loop_s, "epochs": state.epoch_timing,
              "interruptions": state.interruptions}
    return TrainResult(summary, timing, state.epoch_records, model.state_dict() if ctx.is_main else None)
