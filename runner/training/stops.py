"""SIGTERM and SIGINT as requests to stop at the next step boundary.

Modal, vast.ai and SLURM all preempt by sending SIGTERM and waiting a grace period; a
user presses Ctrl-C; a closed terminal sends SIGHUP. Either way the training loop finishes
its step, writes a checkpoint and exits with PREEMPTED (143) or INTERRUPTED (130), which
backends read as "resume me". `resources.timeout_minutes` stops a run the same way (SIGALRM),
and that is a failure (exit 1) with a checkpoint to resume from.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from runner.errors import BUDGET_REACHED, INTERRUPTED, PREEMPTED

if TYPE_CHECKING:
    from runner.training.meter import Budget


class StopRequest:
    """With `timeout_s`, the time limit is a stop request too: SIGALRM when it passes."""

    def __init__(self, timeout_s: float | None = None):
        self.signum: int | None = None
        self.timeout_s = timeout_s
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
                self._previous[signum] = signal.signal(signum, self._handle)
            if self.timeout_s is not None:
                signal.setitimer(signal.ITIMER_REAL, max(self.timeout_s, 0.001))
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        if self.timeout_s is not None and self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Stopped(Exception):
    """Raised out of the training loop after a checkpoint was written for a stop request."""

    def __init__(self, signum: int, step: int, budget: tuple[float, float] | None = None):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step
        self.budget = budget  # (spent, max_usd) when the stop was the budget's (rank 0's figures), not a signal

    @property
    def timed_out(self) -> bool:
        return self.signum == signal.SIGALRM

    @property
    def exit_code(self) -> int:
        if self.budget is not None:
            return BUDGET_REACHED
        if self.timed_out:
            return 1  # the job failed to finish in its time: a failure, though it checkpointed
        return INTERRUPTED if self.signum == signal.SIGINT else PREEMPTED


class EpochEndRule(Protocol):
    """A reason to stop after an epoch (a target met, a sweep's pruner): the name summary.json's
    `stopped_by` gives, or None to go on. Rank 0 asks; every rank follows its answer, so every
    rank must be given the same number of rules."""

    def __call__(self, record: dict) -> str | None: ...


DECIDE_EVERY_S = 1.0  # DDP: about how often the ranks agree whether to stop or checkpoint
MAX_DECIDE_EVERY = 10  # steps: fast steps need not pay a sync each


class Decisions:
    """Whether to stop or checkpoint at this step, the same answer on every rank.

    In DDP every rank must agree to stop (or checkpoint) at the same step; asking costs a sync,
    so ranks ask every few steps, as many as take about DECIDE_EVERY_S (rank 0's clock decides,
    and every rank learns the next step to ask at from the same answer). A stop is then agreed
    within about a second and a step, however slow the steps: the launcher's grace is enough."""

    def __init__(self, stop: StopRequest, checkpoint_every_s: float, ctx, device,
                 epoch_end_rules: Sequence[EpochEndRule] = (), budget: "Budget | None" = None):
        self.stop, self.checkpoint_every_s, self.ctx, self.device = stop, checkpoint_every_s, ctx, device
        self.epoch_end_rules = list(epoch_end_rules)
        self.budget, self.over_budget = budget, False  # rank 0's (the others follow its answer)
        self.last_checkpoint = time.perf_counter()
        self.next_at, self.last = 0, (0, time.perf_counter())

    def restart_from(self, step: int, attempts: Sequence[dict] = (), epoch_records: Sequence[dict] = ()) -> None:
        """A resumed run: the next proposal is measured from this step; its budget counts what
        the earlier attempts (as the checkpoint lists them) spent; a rule with a memory
        (`seen_before`) learns the epochs already closed."""
        self.last = (step, time.perf_counter())
        for rule in self.epoch_end_rules:
            getattr(rule, "seen_before", lambda records: None)(list(epoch_records))
        if self.budget is not None:
            self.budget.count_earlier(attempts)

    def checkpointed(self) -> None:
        self.last_checkpoint = time.perf_counter()

    def due_at(self, step: int) -> bool:
        return step >= self.next_at

    def decide(self, step: int) -> tuple[bool, bool]:
        """(stop, checkpoint now) at `step`, and how many steps until the ranks ask again."""
        ctx, now = self.ctx, time.perf_counter()
        due = ctx.is_main and now - self.last_checkpoint >= self.checkpoint_every_s
        # Would the budget pass before the next decision has saved a checkpoint? (`last`: the previous one)
        over = ctx.is_main and self.budget is not None and self.budget.would_pass(max(now - self.last[1], 0.0))
        if not ctx.distributed:
            self.next_at, self.last, self.over_budget = step + 1, (step, now), over
            return self.stop.requested or over, due
        import torch

        from runner.training.distributed import all_sum

        steps, since = step - self.last[0], now - self.last[1]
        # rank 0's proposal (the others add 0): steps that take about DECIDE_EVERY_S, 1 to MAX_DECIDE_EVERY
        every = min(MAX_DECIDE_EVERY, max(1, int(DECIDE_EVERY_S * steps / since))) if steps and since > 0 else 1
        flags = all_sum(torch.tensor([float(self.stop.requested), float(due), float(every if ctx.is_main else 0),
                                      float(over)], device=self.device), ctx)
        self.next_at = step + int(flags[2].item())
        self.last, self.over_budget = (step, now), flags[3].item() > 0
        return flags[0].item() > 0 or self.over_budget, flags[1].item() > 0

    def stopped(self, step: int) -> Stopped:
        """What the loop raises once its stop's checkpoint is saved: the budget's, or a signal's."""
        if not self.over_budget:
            return Stopped(self.stop.signum or 15, step)
        b = self.budget
        return Stopped(self.stop.signum or 15, step, (b.spent(), b.max_usd) if b is not None else (0.0, 0.0))

    def stop_after_epoch(self, record: dict) -> str | None:
        """The first epoch-end rule that says stop, as rank 0 found it, on every rank; the epoch's
        record names it (`stopped_by`)."""
        if not self.epoch_end_rules:
            return None
        reason = next(filter(None, (rule(record) for rule in self.epoch_end_rules)), None) if self.ctx.is_main else None
        if self.ctx.distributed:
            from runner.training.distributed import broadcast_object

            reason = broadcast_object(reason, self.ctx)
        if reason:
            record["stopped_by"] = reason
        return reason
