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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

from runner.training.checkpoint import CheckpointStore, restore_rng_states, rng_states
from runner.training.distributed import (CommTimer, WorkerContext, all_sum, broadcast_object, destroy_process_group,
                                init_process_group, pick_device)
from runner.errors import bad_input, job_failed
from runner.training.models import build_model, parameter_count
from runner.training.steps import Step, batch_len, step_for
from runner.training.torch_imports import import_dynamo
from runner.training.goal import target_rules
from runner.training.loopstate import LoopState, resumed_state
from runner.training.results import Measured, TrainResult, attempt_timing, summary_of, timing_of
from runner.training.meter import budget_for
from runner.training.stops import Decisions, EpochEndRule, StopRequest
from runner.training.sums import RunningSums
from runner.training.setup import (autocast_for, build_optimizer, prepare_batches, seed_everything,
                                sync)

if TYPE_CHECKING:
    import torch

    from runner.spec.model import JobSpec


class Listener(Protocol):
    def on_start(self, plan: dict) -> None: ...
    def on_step(self, record: dict) -> None: ...
    def on_epoch(self, record: dict) -> None: ...


@dataclass
class Evaluation:
    loss: float
    accuracy: float | None  # the default (classification) step only
    named: dict[str, float] = field(default_factory=dict)  # a user step's values, averaged


def evaluate(model, batches, autocast, ctx: WorkerContext, device, step_fn: Step, names: list[str]) -> Evaluation:
    """The test split, whole, summed across ranks: loss and accuracy for the default step; for a
    user's step its loss and named values, each averaged over the samples."""
    import torch
    import torch.nn.functional as F

    model.eval()
    totals = torch.zeros(3 + len(names), dtype=torch.float64, device=device)  # loss, correct, count, named
    with torch.no_grad(), autocast():
        for batch in batches.test():
            if step_fn.classification:
                x, y = batch
                out = model(x)
                totals[0] += F.cross_entropy(out.float(), y, reduction="sum").double()
                totals[1] += (out.argmax(1) == y).sum()
                totals[2] += len(y)
                continue
            loss, named = step_fn(model, batch)
            n = batch_len(batch)
            totals[0] += loss.double() * n
            totals[2] += n
            for i, name in enumerate(names):
                if name in named:
                    totals[3 + i] += named[name].double() * n
    loss_sum, correct, count, *named_sums = all_sum(totals, ctx).tolist()
    model.train()
    if step_fn.classification:
        return Evaluation(loss_sum / count, correct / count)
    return Evaluation(loss_sum / count, None, {name: v / count for name, v in zip(names, named_sums)})


def train(spec: "JobSpec", ctx: WorkerContext | None = None, listeners: Sequence[Listener] = (),
          started: float | None = None, checkpoints: CheckpointStore | None = None,
          resume_from: dict | None = None, device: "torch.device | None" = None,
          keeps_time_limit: bool = True, epoch_end_rules: Sequence[EpochEndRule] = ()) -> TrainResult:
    """Train `spec`. `checkpoints` (rank 0) is where checkpoints go; `resume_from` (rank 0)
    a loaded checkpoint to continue from: every rank receives it from rank 0. `keeps_time_limit`:
    a lone process stops itself at resources.timeout_minutes, unless a launcher watches it.
    `epoch_end_rules`: reasons to stop after an epoch beside the spec's train.stop_when."""
    started = time.perf_counter() if started is None else started
    ctx = ctx or WorkerContext()
    device = device or pick_device(ctx)
    init_process_group(ctx, device, spec.train.collective_timeout_s)
    # One process alone keeps its own time limit; under a launcher (or SLURM) it is stopped for it.
    limit_s = (None if ctx.distributed or not keeps_time_limit else
               spec.resources.timeout_minutes * 60 - (time.perf_counter() - started))
    try:
        with StopRequest(limit_s) as stop:
            loop = Loop(spec, ctx, listeners, started, device, checkpoints, stop, epoch_end_rules)
            loop.restore(broadcast_object(resume_from, ctx))  # every rank loads what rank 0 read
            loop.announce()
            while loop.epochs_left():
                if not loop.run_epoch():
                    break
                loop.close_epoch()
            return loop.finish()
    finally:
        destroy_process_group(ctx)


class Loop:
    """The training loop's parts, in the order they run: build, restore, the steps of an epoch,
    closing an epoch (evaluate, record, checkpoint), finishing. What it has done so far is in
    `state` (a LoopState), which every checkpoint holds whole; its running sums stay on the
    device (RunningSums) until they are read or saved."""

    def __init__(self, spec: "JobSpec", ctx: WorkerContext, listeners, started: float, device,
                 checkpoints: CheckpointStore | None, stop: StopRequest, epoch_end_rules: Sequence[EpochEndRule] = ()):
        import torch

        from runner.training.flops import training_flops_per_sample

        self.spec, self.t, self.ctx, self.listeners = spec, spec.train, ctx, listeners
        self.started, self.device, self.checkpoints, self.stop = started, device, checkpoints, stop
        self.phases = {"loop_entered_s": time.perf_counter() - started}  # imports and start-up before it
        self.phases["dynamo_imported_s"] = import_dynamo(started)  # torch's own, even without compile
        seed_everything(self.t.seed)
        self.autocast = autocast_for(self.t.precision, device)
        prefer_fast_kernels(device, self.t.precision)
        self.step_fn = step_for(spec)
        self.batches, self.shape, self.num_classes = prepare_batches(spec, device, ctx, self.step_fn.classification)
        self.phases["data_loaded_s"] = time.perf_counter() - started

        self.model = build_model(spec.model, self.shape, self.num_classes).to(device)
        if device.type == "cuda" and len(self.shape) == 3:
            self.model = self.model.to(memory_format=torch.channels_last)  # faster convolutions, the same maths
        self.params = parameter_count(self.model)
        # A user's step may do anything with the model's outputs: its FLOPs are not counted.
        self.flops_per_sample = (training_flops_per_sample(spec.model, self.shape, self.num_classes)
                                 if self.step_fn.classification else None)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = min(self.t.max_steps or math.inf, self.t.epochs * self.steps_per_epoch)
        self.optimizer, self.scheduler = build_optimizer(spec, self.model, self.total_steps, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.t.precision == "fp16")
        self.state = LoopState()
        self.comm = CommTimer()
        self.step_model = wrapped_for_ddp(torch.compile(self.model) if self.t.compile else self.model,
                                          ctx, device, self.comm)
        self.phases["model_built_s"] = time.perf_counter() - started
        self.compile_s: float | None = None  # the first step's extra time when torch.compile builds the model's code
        rules = [*target_rules(spec), *epoch_end_rules]
        self.decisions = Decisions(stop, self.t.checkpoint_every_minutes * 60, ctx, device, rules, budget_for(spec))

    # ---- restore --------------------------------------------------------------------------

    def restore(self, checkpoint: dict | None) -> None:
        """Continue from `checkpoint` (every rank has it): weights, optimizer, schedule, scaler,
        RNG and the loop's position and sums, rescaled to this worker count if it changed."""
        if checkpoint is None:
            return
        load_training_state(checkpoint, self.model, self.optimizer, self.scheduler, self.scaler)
        self.state = resumed_state(checkpoint, self.ctx, self.spec.data.batch_size)
        self.decisions.restart_from(self.state.step, self.state.attempts, self.state.epoch_records)

    def announce(self) -> None:
        s = self.state
        for listener in self.listeners:
            listener.on_start({"epochs": self.t.epochs, "steps_per_epoch": self.steps_per_epoch,
                               "total_steps": self.total_steps, "device": str(self.device),
                               "world_size": self.ctx.world_size, "parameters": self.params,
                               "resumed_at_step": s.step if s.resumed else None})
        self.model.train()

    # ---- one epoch ------------------------------------------------------------------------

    def epochs_left(self) -> bool:
        # An epoch whose steps are all taken is still closed (evaluated, recorded) after a resume
        # from a checkpoint written between its last step and its end.
        s = self.state
        return s.stopped_by is None and s.epoch <= self.t.epochs and (s.step < self.total_steps or s.epoch_steps > 0)

    def run_epoch(self) -> bool:
        """The epoch's remaining steps, checkpointing when due and stopping when asked. False
        when it had no step left to take (nothing to close)."""
        s = self.state
        self.epoch_start = time.perf_counter() - s.epoch_train_s
        # Throughput over the steps since this clock started (the loss window may span epochs,
        # the clock restarts with each: evaluation time is not training time).
        self.window_start, self.rate_steps = time.perf_counter(), 0
        self.data_s = s.epoch_data_s
        self.sums = RunningSums(s, self.device)
        batch_iter = iter(self.batches.train(s.epoch, skip=s.batches_done))
        while s.step < self.total_steps:
            fetch_start = time.perf_counter()
            batch = next(batch_iter, None)
            self.data_s += time.perf_counter() - fetch_start
            if batch is None:
                break
            step_start = time.perf_counter()
            self.step(batch)
            self.after_step(step_start)
            stopping, due = self.decisions.decide(s.step) if self.decisions.due_at(s.step) else (False, False)
            if stopping or due:
                self.checkpoint_mid_epoch()
            if stopping:
                # Every rank waits for rank 0's save: one that exited first would make SLURM's
                # srun --kill-on-bad-exit kill rank 0 mid-write.
                self.comm.wait_for_all(self.ctx)
                raise self.decisions.stopped(s.step)
        return s.epoch_steps > 0

    def step(self, batch) -> None:
        """One optimizer step on one batch. No host-device sync here: the loss (and any named
        values of a user's step) stay on the device."""
        with self.autocast():
            try:
                loss, named = self.step_fn(self.step_model, batch)
            except IndexError as err:  # a dataset whose labels could not be checked when it loaded
                if not self.step_fn.classification or "out of bounds" not in str(err):
                    raise
                raise label_past_classes(err, self.num_classes) from None
        s = self.state
        if named or s.names:
            self.sums.add_named(named, s, self.spec.train.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.sums.add(loss)
        s.step += 1
        s.batches_done += 1
        s.epoch_steps += 1
        s.window_steps += 1

    def after_step(self, step_start: float) -> None:
        """The first step's timing, and a log line when one is due."""
        s = self.state
        self.rate_steps += 1
        if s.time_to_first_step_s is None:
            sync(self.device)
            s.time_to_first_step_s = time.perf_counter() - self.started
            self.phases["first_step_s"] = s.time_to_first_step_s
            self.first_step_wall_s = time.perf_counter() - step_start
        if s.step % self.t.log_every_steps == 0:
            now = time.perf_counter()
            self.log_step(self.rate_steps * self.spec.data.batch_size / max(now - self.window_start, 1e-9))
            self.window_start, self.rate_steps = now, 0

    def log_step(self, samples_per_s: float) -> None:
        # A sync point: reading the loss waits for the device (and, in DDP, the other ranks).
        s, ctx = self.state, self.ctx
        loss_sum, *named_sums = self.sums.window_totals(ctx)
        loss_now = loss_sum / (s.window_steps * ctx.world_size)
        self.check_finite(loss_now, "the training loss")
        record = {"kind": "step", "step": s.step, "epoch": s.epoch, "loss": loss_now,
                  "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": samples_per_s}
        if s.names:
            record["metrics"] = named_means(s.names, named_sums, s.window_steps * self.ctx.world_size)
        self.emit("step", record)
        self.sums.clear_window()
        s.window_steps = 0

    def sums_onto_main(self, *sums: "torch.Tensor") -> list:
        """RunningSums.onto_main, with the window's loss checked before a checkpoint keeps it."""
        window_total, values = self.sums.onto_main(self.ctx, *sums)
        self.check_finite(window_total / max(self.state.window_steps * self.ctx.world_size, 1), "the training loss")
        return values

    def checkpoint_mid_epoch(self) -> None:
        s, sums = self.state, self.sums
        s.window_loss, s.epoch_loss, s.window_named, s.epoch_named = self.sums_onto_main(
            sums.window_loss, sums.epoch_loss, sums.window_named, sums.epoch_named)
        s.epoch_train_s, s.epoch_data_s = time.perf_counter() - self.epoch_start, self.data_s
        self.save_checkpoint()

    # ---- closing an epoch -----------------------------------------------------------------

    def close_epoch(self) -> None:
        """Evaluate, record and report the epoch, set the state to the next one's start, and
        checkpoint there if one is due."""
        s, ctx = self.state, self.ctx
        sync(self.device)
        self.comm.wait_for_all(ctx)
        epoch_wall = time.perf_counter() - self.epoch_start
        s.train_loop_s += epoch_wall
        loss_sum, *named_sums = self.sums.epoch_totals(ctx)
        train_loss = loss_sum / (s.epoch_steps * ctx.world_size)
        self.check_finite(train_loss, "the epoch's training loss")
        eval_start = time.perf_counter()
        tested = evaluate(self.model, self.batches, self.autocast, ctx, self.device, self.step_fn, s.names)
        eval_s = time.perf_counter() - eval_start
        samples_per_s = s.epoch_steps * self.spec.data.batch_size / epoch_wall
        record = {"kind": "epoch", "step": s.step, "epoch": s.epoch, "loss": train_loss,
                  "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": samples_per_s,
                  "test_loss": tested.loss, "test_accuracy": tested.accuracy, "wall_s": epoch_wall}
        if s.names:
            record["metrics"] = named_means(s.names, named_sums, s.epoch_steps * self.ctx.world_size)
            record["test_metrics"] = tested.named
        s.stopped_by = self.decisions.stop_after_epoch(record)  # and the record says so
        s.epoch_records.append(record)
        s.epoch_timing.append({"epoch": s.epoch, "wall_s": epoch_wall, "data_s": self.data_s,
                               "compute_s": max(epoch_wall - self.data_s, 0.0), "eval_s": eval_s,
                               "samples_per_s": samples_per_s, **self.comm.take()})
        self.emit("epoch", record)
        self.note_compile_time(epoch_wall)
        self.next_epoch()

    def note_compile_time(self, epoch_wall: float) -> None:
        if self.t.compile and self.compile_s is None and getattr(self, "first_step_wall_s", None) is not None:
            self.compile_s = compile_time(epoch_wall - self.data_s, self.first_step_wall_s, self.state.epoch_steps)

    def next_epoch(self) -> None:
        """The next epoch starts from zero; a checkpoint taken now resumes there."""
        s = self.state
        s.epoch, s.batches_done = s.epoch + 1, 0
        s.epoch_loss, s.epoch_steps, s.epoch_train_s, s.epoch_data_s = 0.0, 0, 0.0, 0.0
        s.epoch_named = [0.0] * len(s.names)
        s.window_loss, s.window_named = self.sums.window_loss.item(), self.sums.window_named.tolist()
        if self.decisions.decide(s.step)[1]:
            s.window_loss, s.window_named = self.sums_onto_main(self.sums.window_loss, self.sums.window_named)
            self.save_checkpoint()

    # ---- checkpoints, records, the end ------------------------------------------------------

    def save_checkpoint(self) -> None:
        self.decisions.checkpointed()
        self.state.attempt = attempt_timing(self.started, self.state.time_to_first_step_s, self.phases)
        if self.checkpoints is None:
            return
        self.checkpoints.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "rng": rng_states(), "loop": asdict(self.state),
            "world_size": self.ctx.world_size, "spec": self.spec.model_dump(mode="json"),
        }, self.state.step)

    def emit(self, kind: str, record: dict) -> None:
        self.state.records_emitted += 1
        for listener in self.listeners:
            getattr(listener, f"on_{kind}")(record)

    def check_finite(self, value: float, what: str) -> None:
        if self.t.stop_on_nan and not math.isfinite(value):
            raise not_finite(value, what, self.state, self.checkpoints)

    def finish(self) -> TrainResult:
        """The final checkpoint (resuming a finished run has nothing left to do), the summary
        and the timing."""
        s = self.state
        if not s.epoch_records:
            raise job_failed("no epoch finished: nothing to report")
        self.save_checkpoint()
        this = attempt_timing(self.started, self.state.time_to_first_step_s, self.phases)
        measured = Measured(self.device, self.ctx.world_size, self.params, self.flops_per_sample, self.compile_s,
                            getattr(self.batches, "home", "host (DataLoader)"))
        weights = self.model.state_dict() if self.ctx.is_main else None
        return TrainResult(summary_of(self.spec, s, measured, this), timing_of(s, measured, this),
                           s.epoch_records, weights)


def prefer_fast_kernels(device, precision: str) -> None:
    """On CUDA: cuDNN picks the fastest convolution for the shapes it sees, and where the job
    already trades precision for speed (bf16, fp16), the remaining fp32 matmuls use TF32. fp32
    jobs keep full fp32 matmuls: the maths they asked for."""
    if device.type != "cuda":
        return
    import torch

    torch.backends.cudnn.benchmark = True
    allow = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def load_training_state(checkpoint: dict, model, optimizer, scheduler, scaler) -> None:
    """Weights, optimizer, schedule, scaler and RNG states from a checkpoint."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:  # a checkpoint from before checkpoints kept their spec
        raise bad_input("the run's spec no longer matches its checkpoint (the model's weights do not fit "
                        "it); put the spec back as it was, or start a new run") from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_states(checkpoint["rng"])


def wrapped_for_ddp(model, ctx: WorkerContext, device, comm: CommTimer):
    """The model as the steps call it: in DDP, wrapped, its all-reduces timed by `comm`."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids)
    comm.attach(wrapped)
    return wrapped


def compile_time(compute_s: float, first_step_s: float, steps: int) -> float:
    """torch.compile's share of the first step: the first compiled step builds the code; the
    epoch's other steps show what a step costs."""
    typical = (compute_s - first_step_s) / max(steps - 1, 1)
    return max(first_step_s - typical, 0.0)


def label_past_classes(err: IndexError, num_classes: int):
    return bad_input(f"model.num_classes: {num_classes}, but a batch has a label past it ({err}); "
                     f"labels must be 0 to {num_classes - 1}")


def not_finite(value: float, what: str, state: LoopState, checkpoints: CheckpointStore | None):
    paths = checkpoints.paths() if checkpoints else []
    kept = paths[0].name if paths else "none yet"
    return job_failed(f"{what} became {value} by step {state.step} (epoch {state.epoch}); "
                      f"stopped (train.stop_on_nan). Last good checkpoint: {kept}. Try a lower optimizer.lr")


def named_means(names: list[str], sums: list[float], count: int) -> dict[str, float]:
    """A user step's named values, each averaged over `count` per-step means (steps x ranks)."""
    return {name: value / count for name, value in zip(names, sums)}
