"""The fast path (device-resident uint8, batched by index) must give exactly the
batches the DataLoader path gives with per-sample ToTensor/Normalize."""

import torch
from torchvision import datasets, transforms

from runner.training.batches import LoaderBatches, Shard, TensorBatches, train_order
from runner.spec.datasets import BUILTIN_INFO
from runner.training.datasets import load_image_tensors
from runner.spec.model import DataSpec


def _both_paths(root, shard=Shard(), batch=100, seed=7):
    info = BUILTIN_INFO["fashion_mnist"]
    data = DataSpec(dataset="fashion_mnist", root=str(root), download=False, batch_size=batch)
    fast = TensorBatches(load_image_tensors(data, True), load_image_tensors(data, False), info.mean, info.std,
                         torch.device("cpu"), batch, seed, shard)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    slow = LoaderBatches(datasets.FashionMNIST(root, train=True, transform=tf),
                         datasets.FashionMNIST(root, train=False, transform=tf),
                         torch.device("cpu"), batch, seed, shard, num_workers=0)
    return fast, slow


def _assert_same(fast_batches, slow_batches):
    count = 0
    for (fx, fy), (sx, sy) in zip(fast_batches, slow_batches, strict=True):
        assert torch.equal(fy, sy)
        torch.testing.assert_close(fx, sx, rtol=0, atol=1e-5)
        count += 1
    return count


def test_fast_path_matches_the_dataloader_path(fashion_root):
    fast, slow = _both_paths(fashion_root)
    for epoch in (1, 2):
        assert _assert_same(fast.train(epoch), slow.train(epoch)) == 20
    assert _assert_same(fast.test(), slow.test()) == 1


def test_each_rank_gets_a_disjoint_half_of_every_global_batch(fashion_root):
    ranks = [_both_paths(fashion_root, Shard(r, 2))[0] for r in range(2)]
    whole = train_order(2000, 100, 7, 1, Shard())
    for step, (b0, b1) in enumerate(zip(ranks[0].train(1), ranks[1].train(1))):
        labels = torch.cat([b0[1], b1[1]])
        assert len(b0[1]) == len(b1[1]) == 50
        assert sorted(labels.tolist()) == sorted(ranks[0].train_labels[whole[step]].tolist())
    parts = [train_order(2000, 100, 7, 3, Shard(r, 2)) for r in range(2)]
    for a, b in zip(*parts):
        assert not set(a.tolist()) & set(b.tolist())
    # every test sample is evaluated exactly once across ranks
    seen = torch.cat([torch.cat([y for _, y in r.test()]) for r in ranks])
    assert len(seen) == 500


def test_epochs_are_shuffled_differently_but_reproducibly():
    a1, a2 = train_order(1000, 10, 0, 1, Shard()), train_order(1000, 10, 0, 2, Shard())
    assert not torch.equal(a1[0], a2[0])
    assert all(torch.equal(x, y) for x, y in zip(a1, train_order(1000, 10, 0, 1, Shard())))


def test_a_split_kept_in_host_memory_gives_exactly_the_batches_of_one_on_the_device(fashion_root):
    """Where a split would take more than its share of GPU memory it stays in (pinned) host memory:
    the same batches, in the same order, normalised the same way."""
    info = BUILTIN_INFO["fashion_mnist"]
    data = DataSpec(dataset="fashion_mnist", root=str(fashion_root), download=False, batch_size=100)
    splits = load_image_tensors(data, True), load_image_tensors(data, False)
    on_device, on_host = (TensorBatches(*splits, info.mean, info.std, torch.device("cpu"), 100, 7, Shard(), home=h)
                          for h in ("device", "pinned host memory"))
    assert (on_device.home, on_host.home) == ("device", "pinned host memory")
    for a, b in ((on_device.train(1), on_host.train(1)), (on_device.test(), on_host.test())):
        for (ax, ay), (bx, by) in zip(a, b, strict=True):
            assert torch.equal(ax, bx) and torch.equal(ay, by)


def test_data_stays_on_the_gpu_only_within_its_share_of_the_gpus_memory():
    from runner.training.batches import DEVICE_DATA_FRACTION, data_home

    gpu, gib = torch.device("cuda", 0), 2**30
    assert data_home(int(DEVICE_DATA_FRACTION * 16 * gib), gpu, 16 * gib) == "device"  # e.g. CIFAR-10 on a T4
    assert data_home(int(DEVICE_DATA_FRACTION * 16 * gib) + 1, gpu, 16 * gib) == "pinned host memory"
    assert data_home(10**12, torch.device("cpu")) == "device"  # a CPU's data is in its memory already
