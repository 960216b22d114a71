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

from runner.training.checkpoint import CheckpointStore, restore_rng_states, rng_states
from runner.training.distributed import (CommTimer, WorkerContext, all_sum, broadcast_object, destroy_process_group,
                                init_process_group, pick_device)
from runner.errors import bad_input, job_failed
from runner.training.models import build_model, parameter_count
from runner.training.steps import Step, batch_len, step_for
from runner.training.torch_imports import import_dynamo
from runner.training.stops import StopRequest, Stopped
from runner.training.setup import (autocast_for, build_optimizer, device_name, prepare_batches, seed_everything,
                                sync)

if TYPE_CHECKING:
    import torch

    from runner.spec.model import JobSpec


DECIDE_EVERY_S = 1.0  # DDP: about how often the ranks agree whether to stop or checkpoint
MAX_DECIDE_EVERY = 10  # steps: fast steps need not pay a sync each


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
    # This attempt's own start, as of the checkpoint (the next attempt lists it among `attempts`),
    # and the earlier attempts': each attempt's figures are its own, never mixed with another's.
    attempt: dict = field(default_factory=dict)
    attempts: list = field(default_factory=list)
    # The named values a user's train.step returns, in the order first seen, and their sums.
    names: list = field(default_factory=list)
    epoch_named: list = field(default_factory=list)
    window_named: list = field(default_factory=list)


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


def train(spec: "JobSpec", ctx: WorkerContext | None = None, listeners: list[Listener] = (),
          started: float | None = None, checkpoints: CheckpointStore | None = None,
          resume_from: dict | None = None, device: "torch.device | None" = None,
          keeps_time_limit: bool = True) -> TrainResult:
    """Train `spec`. `checkpoints` (rank 0) is where checkpoints go; `resume_from` (rank 0)
    a loaded checkpoint to continue from: every rank receives it from rank 0. `keeps_time_limit`:
    a lone process stops itself at resources.timeout_minutes, unless a launcher watches it."""
    started = time.perf_counter() if started is None else started
    ctx = ctx or WorkerContext()
    device = device or pick_device(ctx)
    init_process_group(ctx, device, spec.train.collective_timeout_s)
    # One process alone keeps its own time limit; under a launcher (or SLURM) it is stopped for it.
    limit_s = (None if ctx.distributed or not keeps_time_limit else
               spec.resources.timeout_minutes * 60 - (time.perf_counter() - started))
    try:
        with StopRequest(limit_s) as stop:
            loop = Loop(spec, ctx, listeners, started, device, checkpoints, stop)
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
    `state` (a LoopState), which every checkpoint holds whole."""

    def __init__(self, spec: "JobSpec", ctx: WorkerContext, listeners, started: float, device,
                 checkpoints: CheckpointStore | None, stop: StopRequest):
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
        self.step_model = self._wrapped(torch.compile(self.model) if self.t.compile else self.model)
        self.phases["model_built_s"] = time.perf_counter() - started
        self.last_checkpoint = time.perf_counter()
        self.compile_s = None  # the first step's extra time when torch.compile builds the model's code
        # In DDP every rank must agree to stop (or checkpoint) at the same step; asking costs a sync,
        # so ranks ask every few steps, as many as take about DECIDE_EVERY_S (rank 0's clock decides,
        # and every rank learns the next step to ask at from the same answer). A stop is then agreed
        # within about a second and a step, however slow the steps: the launcher's grace is enough.
        self.next_decision, self.last_decision = 0, (0, time.perf_counter())

    def _wrapped(self, model):
        self.comm = CommTimer()
        if not self.ctx.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
        self.comm.attach(wrapped)
        return wrapped

    # ---- restore --------------------------------------------------------------------------

    def restore(self, checkpoint: dict | None) -> None:
        """Continue from `checkpoint` (every rank has it): weights, optimizer, schedule, scaler,
        RNG and the loop's position and sums, rescaled to this worker count if it changed."""
        if checkpoint is None:
            return
        ctx = self.ctx
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError:  # a checkpoint from before checkpoints kept their spec
            raise bad_input("the run's spec no longer matches its checkpoint (the model's weights do not fit "
                            "it); put the spec back as it was, or start a new run") from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_states(checkpoint["rng"])
        state = LoopState(**checkpoint["loop"])
        if not ctx.is_main:  # the checkpoint holds every rank's loss sums on rank 0
            state.epoch_loss = state.window_loss = 0.0
        saved_world = checkpoint.get("world_size", ctx.world_size)
        if saved_world != ctx.world_size and ctx.is_main:
            # The sums add each rank's mean loss per step: W of them. Rescaled to the new W, the
            # epoch's mean comes out as if every step had been taken at this size (the global
            # batch, and so the maths, is the same at any worker count).
            state.epoch_loss *= ctx.world_size / saved_world
            state.window_loss *= ctx.world_size / saved_world
            print(f"gpujob: resuming with {ctx.world_size} worker(s), the checkpoint was written by {saved_world}: "
                  f"the global batch stays {self.spec.data.batch_size}", file=sys.stderr)
        state.resumed += 1
        state.interruptions.append({"resumed_at_step": state.step, "epoch": state.epoch})
        if state.attempt:  # the attempt that wrote this checkpoint, up to it (what came after is lost)
            state.attempts.append({**state.attempt, "ended": "at its last checkpoint"})
        state.attempt, state.time_to_first_step_s = {}, None  # this attempt times its own start
        self.state = state
        self.last_decision = (state.step, time.perf_counter())

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
        return s.epoch <= self.t.epochs and (s.step < self.total_steps or s.epoch_steps > 0)

    def run_epoch(self) -> bool:
        """The epoch's remaining steps, checkpointing when due and stopping when asked. False
        when it had no step left to take (nothing to close)."""
        import torch

        s, t = self.state, self.t
        self.epoch_start = time.perf_counter() - s.epoch_train_s
        # Throughput over the steps since this clock started (the loss window may span epochs,
        # the clock restarts with each: evaluation time is not training time).
        window_start, rate_steps = time.perf_counter(), 0
        self.data_s = s.epoch_data_s
        self.epoch_loss = torch.tensor(s.epoch_loss, dtype=torch.float64, device=self.device)
        self.window_loss = torch.tensor(s.window_loss, dtype=torch.float64, device=self.device)
        self.epoch_named = torch.tensor(s.epoch_named, dtype=torch.float64, device=self.device)
        self.window_named = torch.tensor(s.window_named, dtype=torch.float64, device=self.device)
        batch_iter = iter(self.batches.train(s.epoch, skip=s.batches_done))
        while s.step < self.total_steps:
            fetch_start = time.perf_counter()
            batch = next(batch_iter, None)
            self.data_s += time.perf_counter() - fetch_start
            if batch is None:
                break
            step_start = time.perf_counter()
            self.step(batch)
            rate_steps += 1
            if s.time_to_first_step_s is None:
                sync(self.device)
                s.time_to_first_step_s = time.perf_counter() - self.started
                self.phases["first_step_s"] = s.time_to_first_step_s
                self.first_step_wall_s = time.perf_counter() - step_start
            if s.step % t.log_every_steps == 0:
                now = time.perf_counter()
                self.log_step(rate_steps * self.spec.data.batch_size / max(now - window_start, 1e-9))
                window_start, rate_steps = now, 0
            stopping, due = self.decide() if s.step >= self.next_decision else (False, False)
            if stopping or due:
                s.window_loss, s.epoch_loss, s.window_named, s.epoch_named = self.sums_onto_main(
                    self.window_loss, self.epoch_loss, self.window_named, self.epoch_named)
                s.epoch_train_s, s.epoch_data_s = time.perf_counter() - self.epoch_start, self.data_s
                self.save_checkpoint()
                if stopping:
                    # Every rank waits for rank 0's save: one that exited first would make SLURM's
                    # srun --kill-on-bad-exit kill rank 0 mid-write.
                    self.comm.wait_for_all(self.ctx)
                    raise Stopped(self.stop.signum or 15, s.step)
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
                raise bad_input(f"model.num_classes: {self.num_classes}, but a batch has a label past it ({err}); "
                                f"labels must be 0 to {self.num_classes - 1}") from None
        if named or self.state.names:
            self.add_named(named)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        detached = loss.detach()
        self.epoch_loss += detached
        self.window_loss += detached
        s = self.state
        s.step += 1
        s.batches_done += 1
        s.epoch_steps += 1
        s.window_steps += 1

    def add_named(self, named: dict) -> None:
        """Sum a user step's named values. The names are fixed by the first step (every rank
        takes the same first step): a step that names others is the function's error."""
        import torch

        s = self.state
        if not s.names:
            s.names = list(named)
            self.epoch_named = torch.zeros(len(s.names), dtype=torch.float64, device=self.device)
            self.window_named = torch.zeros_like(self.epoch_named)
        if list(named) != s.names:
            raise job_failed(f"train.step: {self.spec.train.step} returned {sorted(named)} at step {s.step + 1}, "
                             f"but {sorted(s.names)} before; return the same names every step")
        values = torch.stack([named[name].detach().to(self.device, torch.float64) for name in s.names])
        self.epoch_named += values
        self.window_named += values

    def named_means(self, sums, steps: int) -> dict[str, float]:
        return {name: value / (steps * self.ctx.world_size) for name, value in zip(self.state.names, sums)}

    def log_step(self, samples_per_s: float) -> None:
        # A sync point: reading the loss waits for the device (and, in DDP, the other ranks).
        import torch

        s, ctx = self.state, self.ctx
        loss_sum, *named_sums = all_sum(torch.cat([self.window_loss.view(1), self.window_named]), ctx).tolist()
        loss_now = loss_sum / (s.window_steps * ctx.world_size)
        self.check_finite(loss_now, "the training loss")
        record = {"kind": "step", "step": s.step, "epoch": s.epoch, "loss": loss_now,
                  "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": samples_per_s}
        if s.names:
            record["metrics"] = self.named_means(named_sums, s.window_steps)
        self.emit("step", record)
        self.window_loss.zero_()
        self.window_named.zero_()
        s.window_steps = 0

    def decide(self) -> tuple[bool, bool]:
        """(stop, checkpoint now), the same on every rank: rank 0's clock says when one is due,
        and how many steps until the ranks ask again."""
        import torch

        ctx, now = self.ctx, time.perf_counter()
        due = ctx.is_main and now - self.last_checkpoint >= self.t.checkpoint_every_minutes * 60
        if not ctx.distributed:
            self.next_decision = self.state.step + 1
            return self.stop.requested, due
        steps, since = self.state.step - self.last_decision[0], now - self.last_decision[1]
        # rank 0's proposal (the others add 0): steps that take about DECIDE_EVERY_S, 1 to MAX_DECIDE_EVERY
        every = min(MAX_DECIDE_EVERY, max(1, int(DECIDE_EVERY_S * steps / since))) if steps and since > 0 else 1
        flags = all_sum(torch.tensor([float(self.stop.requested), float(due), float(every if ctx.is_main else 0)],
                                     device=self.device), ctx)
        self.next_decision = self.state.step + int(flags[2].item())
        self.last_decision = (self.state.step, now)
        return flags[0].item() > 0, flags[1].item() > 0

    def sums_onto_main(self, window_loss: "torch.Tensor", *more: "torch.Tensor") -> list:
        """Move every rank's running sums (the window's loss first) onto rank 0 (the totals are
        unchanged), so the checkpoint rank 0 writes holds all of them and a resumed run continues
        the same sums. Each comes back as it is held in LoopState: a float, or a list for a vector."""
        import torch

        ctx, sums = self.ctx, (window_loss, *more)
        totals = all_sum(torch.cat([t.reshape(-1) for t in sums]), ctx)
        self.check_finite(totals[0].item() / max(self.state.window_steps * ctx.world_size, 1), "the training loss")
        local = totals if ctx.is_main else torch.zeros_like(totals)
        values, at = [], 0
        for tensor in sums:
            part = local[at:at + tensor.numel()]
            at += tensor.numel()
            tensor.copy_(part.reshape(tensor.shape))
            values.append(part.item() if tensor.dim() == 0 else part.tolist())
        return values

    # ---- closing an epoch -----------------------------------------------------------------

    def close_epoch(self) -> None:
        """Evaluate, record and report the epoch, set the state to the next one's start, and
        checkpoint there if one is due."""
        s, ctx = self.state, self.ctx
        sync(self.device)
        self.comm.wait_for_all(ctx)
        epoch_wall = time.perf_counter() - self.epoch_start
        s.train_loop_s += epoch_wall
        import torch

        loss_sum, *named_sums = all_sum(torch.cat([self.epoch_loss.view(1), self.epoch_named]), ctx).tolist()
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
            record["metrics"] = self.named_means(named_sums, s.epoch_steps)
            record["test_metrics"] = tested.named
        s.epoch_records.append(record)
        s.epoch_timing.append({"epoch": s.epoch, "wall_s": epoch_wall, "data_s": self.data_s,
                               "compute_s": max(epoch_wall - self.data_s, 0.0), "eval_s": eval_s,
                               "samples_per_s": samples_per_s, **self.comm.take()})
        self.emit("epoch", record)
        if self.t.compile and self.compile_s is None and getattr(self, "first_step_wall_s", None) is not None:
            # The first compiled step builds the code; the epoch's other steps show what a step costs.
            typical = (epoch_wall - self.data_s - self.first_step_wall_s) / max(s.epoch_steps - 1, 1)
            self.compile_s = max(self.first_step_wall_s - typical, 0.0)
        # The next epoch starts from zero; a checkpoint taken now resumes there.
        s.epoch, s.batches_done = s.epoch + 1, 0
        s.epoch_loss, s.epoch_steps, s.epoch_train_s, s.epoch_data_s = 0.0, 0, 0.0, 0.0
        s.epoch_named = [0.0] * len(s.names)
        s.window_loss, s.window_named = self.window_loss.item(), self.window_named.tolist()
        if self.decide()[1]:
            s.window_loss, s.window_named = self.sums_onto_main(self.window_loss, self.window_named)
            self.save_checkpoint()

    # ---- checkpoints, records, the end ------------------------------------------------------

    def save_checkpoint(self) -> None:
        self.last_checkpoint = time.perf_counter()
        self.state.attempt = self.attempt_timing()
        if self.checkpoints is None:
            return
        self.checkpoints.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "rng": rng_states(), "loop": asdict(self.state),
            "world_size": self.ctx.world_size, "spec": self.spec.model_dump(mode="json"),
        }, self.state.step)

    def attempt_timing(self) -> dict:
        """This attempt's start-up and length so far, from its own clock."""
        total_s = time.perf_counter() - self.started
        return {"started_at": time.time() - total_s, "time_to_first_step_s": self.state.time_to_first_step_s,
                "total_s": total_s, "phases": dict(self.phases)}

    def emit(self, kind: str, record: dict) -> None:
        self.state.records_emitted += 1
        for listener in self.listeners:
            getattr(listener, f"on_{kind}")(record)

    def check_finite(self, value: float, what: str) -> None:
        if self.t.stop_on_nan and not math.isfinite(value):
            paths = self.checkpoints.paths() if self.checkpoints else []
            kept = paths[0].name if paths else "none yet"
            raise job_failed(f"{what} became {value} by step {self.state.step} (epoch {self.state.epoch}); "
                             f"stopped (train.stop_on_nan). Last good checkpoint: {kept}. Try a lower optimizer.lr")

    def finish(self) -> TrainResult:
        """The final checkpoint (resuming a finished run has nothing left to do), the summary
        and the timing."""
        from runner.training.flops import peak_tflops

        s, ctx, spec = self.state, self.ctx, self.spec
        if not s.epoch_records:
            raise job_failed("no epoch finished: nothing to report")
        self.save_checkpoint()
        this = self.attempt_timing()
        total_s = this["total_s"]
        last = s.epoch_records[-1]
        samples_per_s = s.step * spec.data.batch_size / max(s.train_loop_s, 1e-9)
        achieved = self.flops_per_sample * samples_per_s / 1e12 if self.flops_per_sample else None
        peak = peak_tflops(self.device, self.t.precision)
        summary = {
            "name": spec.name, "model": spec.model.name, "dataset": spec.data.dataset,
            "train_loss": last["loss"], "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
            "epochs": len(s.epoch_records), "steps": s.step, "wall_s": total_s, "samples_per_s": samples_per_s,
            "per_worker_samples_per_s": samples_per_s / ctx.world_size, "device": str(self.device),
            "device_name": device_name(self.device), "world_size": ctx.world_size, "precision": self.t.precision,
            "parameters": self.params, "global_batch_size": spec.data.batch_size,
            "local_batch_size": spec.data.batch_size // ctx.world_size, "resumed": s.resumed,
            "flops_per_sample": self.flops_per_sample, "achieved_tflops": achieved,
            "peak_tflops_per_device": peak,
            "mfu": achieved / (peak * ctx.world_size) if achieved is not None and peak else None,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            # where the training data was held: "device", "pinned host memory", or a DataLoader's workers
            "data_held_on": getattr(self.batches, "home", "host (DataLoader)"),
        }
        if "metrics" in last:  # a user step's named values, as the last epoch averaged them
            summary["metrics"], summary["test_metrics"] = last["metrics"], last["test_metrics"]
        attempts = [*s.attempts, this]
        whole_s = sum(a["total_s"] for a in attempts)
        summary["whole_wall_s"] = whole_s
        # The top-level figures are this attempt's, each consistent with the others; `attempts`
        # lists every attempt's own, and whole_s adds them up (earlier ones to their last checkpoint).
        timing = {"time_to_first_step_s": this["time_to_first_step_s"], "total_s": this["total_s"],
                  "train_loop_s": s.train_loop_s, "compile_s": self.compile_s,
                  "train_loop_without_compile_s": s.train_loop_s - (self.compile_s or 0.0),
                  "started_at": this["started_at"], "phases": this["phases"],
                  "epochs": s.epoch_timing, "interruptions": s.interruptions,
                  "attempts": attempts, "whole_s": whole_s}
        weights = self.model.state_dict() if ctx.is_main else None
        return TrainResult(summary, timing, s.epoch_records, weights)


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


def peak_memory_bytes(device) -> int | None:
    """The most memory the job held: CUDA's allocator peak, or this process's peak RSS."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:  # Linux: this process's own high-water mark (ru_maxrss may carry a parent's across exec)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS says bytes, Linux KiB
    except (ImportError, OSError):
        return None
