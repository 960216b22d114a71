"""`--dry-run`: prove a job will start before paying for a GPU. Builds the model, runs a
few training steps on the CPU (on the real data if it is on disk, else on synthetic
data of the dataset's declared shape, and says which) and estimates memory."""

from __future__ import annotations

import time

from runner.backends import Plan

DRY_STEPS = 3


def dry_run(plan: Plan) -> list[tuple[str, str]]:
    import torch
    import torch.nn.functional as F

    from runner.datasets import dataset_info, on_disk
    from runner.models import build_model, parameter_count
    from runner.train import build_optimizer, seed_everything

    spec = plan.spec
    seed_everything(spec.train.seed)
    local_batch = spec.data.batch_size // max(plan.world_size, 1)
    info = dataset_info(spec.data)
    if info is None:
        from runner.train import prepare_batches
        from runner.distributed import WorkerContext

        batches, shape, classes = prepare_batches(spec, torch.device("cpu"), WorkerContext())
        data_source = f"real ({spec.data.dataset}, through its DataLoader)"
        batch_iter = batches.train(1)
        next_batch = lambda: next(batch_iter)  # noqa: E731
    else:
        shape, classes = info.shape, spec.model.num_classes or info.num_classes
        if on_disk(spec.data):
            from runner.batches import Shard, TensorBatches
            from runner.datasets import load_image_tensors

            split = load_image_tensors(spec.data, train=True)
            test = load_image_tensors(spec.data, train=False)
            batches = TensorBatches(split, test, info.mean, info.std, torch.device("cpu"),
                                    local_batch, spec.train.seed, Shard())
            batch_iter = batches.train(1)
            next_batch = lambda: next(batch_iter)  # noqa: E731
            data_source = f"real ({spec.data.dataset} found under {spec.data.root})"
        else:
            def next_batch():
                return torch.randn(local_batch, *shape), torch.randint(0, classes, (local_batch,))
            data_source = f"synthetic {list(shape)} ({spec.data.dataset} is not on disk yet)"

    model = build_model(spec.model, shape, classes)
    activation_bytes = _activation_bytes(model, shape, local_batch)
    optimizer, _ = build_optimizer(spec, model, DRY_STEPS)
    losses, start = [], time.perf_counter()
    for _ in range(DRY_STEPS):
        x, y = next_batch()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    per_step = (time.perf_counter() - start) / DRY_STEPS
    params = parameter_count(model)
    state_copies = {"sgd": 1 if spec.optimizer.momentum else 0, "adam": 2, "adamw": 2}[spec.optimizer.name]
    weights_bytes = params * 4 * (2 + state_copies)  # weights, grads, optimizer state (fp32 masters)
    act_scale = 0.5 if spec.train.precision != "fp32" else 1.0
    estimate = weights_bytes + activation_bytes * act_scale
    return plan.describe() + [
        ("model", f"{spec.model.name}: {params:,} parameters"),
        ("data", data_source),
        ("batch", f"{spec.data.batch_size} global, {local_batch} per worker"),
        ("dry steps", f"{DRY_STEPS} on cpu, loss {' -> '.join(f'{v:.3f}' for v in losses)}, {per_step * 1000:.0f} ms/step"),
        ("memory per worker", f"~{estimate / 2**20:,.0f} MiB (weights+grads+optimizer {weights_bytes / 2**20:,.0f} MiB, "
                              f"activations {activation_bytes * act_scale / 2**20:,.0f} MiB)"),
    ]


def _activation_bytes(model, shape, batch: int) -> int:
    """Bytes of every leaf module's output for one batch: what autograd keeps for backward."""
    import torch

    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(batch, *shape))
    for hook in hooks:
        hook.remove()
    return total
