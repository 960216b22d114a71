"""One batch as the job will see it, for what gpujob counts before the job runs (the dry run's
memory check and FLOPs, `gpujob estimate`): a batch of the user's own data where the dataset is
theirs (any structure: tuples, dicts, int token ids, several inputs), zeros of the right shape
for a built-in image dataset. Counting runs the job's own step on it, on PyTorch's meta device
(shapes only: nothing is allocated or computed) where the model can run there, on two real
samples otherwise."""

from __future__ import annotations

from typing import Callable

from runner.training.steps import Step, batch_len, head, map_tensors

COUNT_BATCH = 2  # BatchNorm refuses to train on a batch of one where a feature map is 1x1


def image_batch(shape: tuple[int, ...], n: int = COUNT_BATCH):
    """What a built-in dataset's batch is: normalised float images and int64 labels."""
    import torch

    return torch.zeros(n, *shape), torch.zeros(n, dtype=torch.long)


def first_batch(batches, n: int = COUNT_BATCH):
    """The first `n` samples of a factory dataset's first training batch, as its DataLoader gives it."""
    return head(next(iter(batches.train(1))), n)


def on_meta(batch):
    """The batch's tensors as shapes alone, on the meta device (their dtypes kept: token ids stay ints)."""
    return map_tensors(batch, lambda t: t.to("meta"))


def input_bytes_per_sample(batch) -> int:
    """What one sample of the batch takes, whatever its structure and dtypes."""
    total: list[int] = []

    def count(t):
        total.append(t[0].numel() * t.element_size() if t.dim() else 0)
        return t

    map_tensors(batch, count)
    return sum(total)


def step_loss(step_fn: Step, model, batch):
    """The job's own step on `batch`: the loss a training step would backpropagate."""
    loss, _named = step_fn(model, batch)
    return loss


def on_meta_or_real(run: Callable, model_factory: Callable, batch):
    """run(model, batch) on the meta device, or, where the model or the step cannot run there (user
    code that reads values), on a real copy of two samples."""
    import torch

    try:
        with torch.device("meta"):
            return run(model_factory(), on_meta(batch))
    except Exception:
        return run(model_factory(), head(batch, min(COUNT_BATCH, batch_len(batch))))
