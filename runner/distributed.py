"""Where this process stands in a job: rank, local rank, world size, from the
launcher's environment variables (torchrun's names), and the helpers the training
loop needs to agree across ranks. A single process is rank 0 of 1."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WorkerContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "WorkerContext":
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def pick_device(ctx: WorkerContext) -> "torch.device":
    """cuda > mps > cpu, one GPU per rank."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    if torch.backends.mps.is_available() and not ctx.distributed:
        return torch.device("mps")
    return torch.device("cpu")


def init_process_group(ctx: WorkerContext, device: "torch.device") -> None:
    if not ctx.distributed:
        return
    import datetime

    import torch.distributed as dist

    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get("GPUJOB_COLLECTIVE_TIMEOUT_S", 600)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)


def all_sum(values: "torch.Tensor", ctx: WorkerContext) -> "torch.Tensor":
    """Sum a small tensor of statistics over ranks (a no-op in one process)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def destroy_process_group(ctx: WorkerContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
