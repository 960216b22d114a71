"""Where this process stands in a job: rank, local rank, world size, from the
launcher's environment variables (torchrun's names), and the helpers the training
loop needs to agree across ranks. A single process is rank 0 of 1."""

from __future__ import annotations

import os
from contextlib import contextmanager
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


JOINED = "gpujob-worker: joined the job"  # a worker's stderr line once the rendezvous is done (the launcher reads it)


@dataclass
class GroupFacts:
    """What this process saw of its process group, for the record a failing worker leaves
    (runner/launching/blame.py): whether it joined the job, and whether a collective failed
    under it (a peer died, hung past train.collective_timeout_s or left). gloo then raises a bare
    RuntimeError, so the exception's type alone cannot say so; NCCL's and the store's errors can."""

    joined: bool = False
    collective_failed: bool = False


GROUP = GroupFacts()


@contextmanager
def collective():
    """Around a call that talks to the other ranks: its failure is noted in GROUP."""
    try:
        yield
    except Exception:
        GROUP.collective_failed = True
        raise


def pick_device(ctx: WorkerContext) -> "torch.device":
    """cuda > mps > cpu, one GPU per rank."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    if torch.backends.mps.is_available() and not ctx.distributed:
        return torch.device("mps")
    return torch.device("cpu")


def init_process_group(ctx: WorkerContext, device: "torch.device", timeout_s: float) -> None:
    """nccl on CUDA, gloo on CPU; rendezvous from MASTER_ADDR/MASTER_PORT. A collective
    that waits longer than `timeout_s` (a rank died or hangs) raises instead of hanging."""
    if not ctx.distributed:
        return
    import datetime

    import torch.distributed as dist

    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    GROUP.joined = True
    import sys

    print(f"{JOINED} (rank {ctx.rank} of {ctx.world_size})", file=sys.stderr, flush=True)


class CommTimer:
    """Time spent in DDP's gradient all-reduces (which overlap backward) and waiting
    for the slowest rank at epoch ends: the cost of running on more than one worker."""

    def __init__(self):
        self.allreduce_s = 0.0
        self.barrier_s = 0.0

    def attach(self, ddp_model) -> None:
        import time

        import torch.distributed as dist

        def timed_allreduce(state, bucket):
            start = time.perf_counter()
            tensor = bucket.buffer().div_(dist.get_world_size())
            future = dist.all_reduce(tensor, async_op=True).get_future()

            def done(fut):
                self.allreduce_s += time.perf_counter() - start
                with collective():  # a failed all-reduce reaches backward() as a bare RuntimeError
                    return fut.value()[0]

            return future.then(done)

        ddp_model.register_comm_hook(None, timed_allreduce)

    def wait_for_all(self, ctx: WorkerContext) -> None:
        if ctx.distributed:
            import time

            import torch.distributed as dist

            start = time.perf_counter()
            with collective():
                dist.barrier()
            self.barrier_s += time.perf_counter() - start

    def take(self) -> dict:
        taken = {"allreduce_s": self.allreduce_s, "barrier_wait_s": self.barrier_s}
        self.allreduce_s = self.barrier_s = 0.0
        return taken


def all_sum(values: "torch.Tensor", ctx: WorkerContext) -> "torch.Tensor":
    """Sum a small tensor of statistics over ranks (a no-op in one process)."""
    if ctx.distributed:
        import torch.distributed as dist

        with collective():
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def in_turns(ctx: WorkerContext, work):
    """Run `work()` on rank 0 first, then on each other node's first rank, then on the rest,
    and return its result. For what may download into a shared folder (a dataset): parallel
    downloads into one place corrupt it; a second turn finds the files there."""
    if not ctx.distributed:
        return work()
    import torch.distributed as dist

    result = None
    for my_turn in (ctx.rank == 0, ctx.rank != 0 and ctx.local_rank == 0, ctx.local_rank != 0):
        if my_turn:
            result = work()
        with collective():
            dist.barrier()
    return result


def broadcast_object(obj, ctx: WorkerContext):
    """Rank 0's object on every rank (e.g. the checkpoint only rank 0 can read)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    holder = [obj if ctx.is_main else None]
    with collective():
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def destroy_process_group(ctx: WorkerContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
