"""The loop's running sums, kept on the device: no host-device sync per step.

The epoch's and the log window's loss (sums of per-step mean losses, float64) and, for a user's
train.step, the sums of the named values it returns. Each rank sums its own; the sums meet on
rank 0 only to be read (a log line, an epoch's record) or saved (a checkpoint)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.errors import job_failed
from runner.training.distributed import WorkerContext, all_sum

if TYPE_CHECKING:
    import torch

    from runner.training.loopstate import LoopState


class RunningSums:
    def __init__(self, state: "LoopState", device):
        import torch

        def held(value):
            return torch.tensor(value, dtype=torch.float64, device=device)

        self.device = device
        self.epoch_loss, self.window_loss = held(state.epoch_loss), held(state.window_loss)
        self.epoch_named, self.window_named = held(state.epoch_named), held(state.window_named)

    def add(self, loss: "torch.Tensor") -> None:
        detached = loss.detach()
        self.epoch_loss += detached
        self.window_loss += detached

    def add_named(self, named: dict, state: "LoopState", step_name: str | None) -> None:
        """Sum a user step's named values. The names are fixed by the first step (every rank
        takes the same first step): a step that names others is the function's error."""
        import torch

        if not state.names:
            state.names = list(named)
            self.epoch_named = torch.zeros(len(state.names), dtype=torch.float64, device=self.device)
            self.window_named = torch.zeros_like(self.epoch_named)
        if list(named) != state.names:
            raise job_failed(f"train.step: {step_name} returned {sorted(named)} at step {state.step + 1}, "
                             f"but {sorted(state.names)} before; return the same names every step")
        values = torch.stack([named[name].detach().to(self.device, torch.float64) for name in state.names])
        self.epoch_named += values
        self.window_named += values

    def window_totals(self, ctx: WorkerContext) -> list[float]:
        """The window's loss sum and named sums, added across ranks (a sync point)."""
        import torch

        return all_sum(torch.cat([self.window_loss.view(1), self.window_named]), ctx).tolist()

    def epoch_totals(self, ctx: WorkerContext) -> list[float]:
        import torch

        return all_sum(torch.cat([self.epoch_loss.view(1), self.epoch_named]), ctx).tolist()

    def clear_window(self) -> None:
        self.window_loss.zero_()
        self.window_named.zero_()

    def onto_main(self, ctx: WorkerContext, *sums: "torch.Tensor") -> tuple[float, list]:
        """Move every rank's `sums` (the window's loss first) onto rank 0 (the totals are
        unchanged), so the checkpoint rank 0 writes holds all of them and a resumed run continues
        the same sums. Returns the window's total loss (for the finite check) and each sum as
        LoopState holds it: a float, or a list for a vector."""
        import torch

        totals = all_sum(torch.cat([t.reshape(-1) for t in sums]), ctx)
        window_total = totals[0].item()
        local = totals if ctx.is_main else torch.zeros_like(totals)
        values, at = [], 0
        for tensor in sums:
            part = local[at:at + tensor.numel()]
            at += tensor.numel()
            tensor.copy_(part.reshape(tensor.shape))
            values.append(part.item() if tensor.dim() == 0 else part.tolist())
        return window_total, values
