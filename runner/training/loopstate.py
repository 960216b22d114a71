"""Where the training loop is and what it has summed so far (LoopState), saved whole in every
checkpoint, and how a resumed run takes it back: rescaled when the worker count changed, with the
attempt that wrote the checkpoint listed among the earlier attempts."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from runner.training.distributed import WorkerContext


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
    stopped_by: str | None = None  # an epoch-end rule that ended the run (its target met): no epoch follows


def resumed_state(checkpoint: dict, ctx: WorkerContext, global_batch: int) -> LoopState:
    """The loop's state as the checkpoint left it, for this attempt: every rank's loss sums on
    rank 0 (rescaled if the worker count changed), one more resume and interruption counted, the
    attempt that wrote the checkpoint closed and this one's start cleared (it times its own)."""
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
              f"the global batch stays {global_batch}", file=sys.stderr)
    state.resumed += 1
    state.interruptions.append({"resumed_at_step": state.step, "epoch": state.epoch})
    if state.attempt:  # the attempt that wrote this checkpoint, up to it (what came after is lost)
        state.attempts.append({**state.attempt, "ended": "at its last checkpoint"})
    state.attempt, state.time_to_first_step_s = {}, None  # this attempt times its own start
    return state
