"""The seeds' plain FashionMNIST loop vs `gpujob run jobs/fashion_mlp.yaml`, same data, same machine, one run.

Same model (784-128-10 MLP), optimizer (SGD lr 0.01), batch size (64), normalisation and epochs;
what differs is the data path: per-sample PIL -> ToTensor -> Normalize through a DataLoader
against gpujob's whole split as one uint8 tensor batched by index.

    uv run python benchmarks/seeds_vs_gpujob.py [--epochs 3] [--data-root ./data] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so `tests.fashion_idx` and `runner` import when run as a script

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from tests.fashion_idx import write_fashion_mnist  # noqa: E402


def has_fashion_mnist(root: Path) -> bool:
    try:
        datasets.FashionMNIST(root=root, train=True, download=False)
        return True
    except RuntimeError:  # torchvision's "Dataset not found"
        return False


def seeds_loop(root: Path, epochs: int, workers: int) -> dict:
    """The notebook, as written there; only the clocks are added. It takes 938 steps an epoch (the last
    of 32 samples) where gpujob drops the partial batch and takes 937: 0.05% more work, left as is."""
    torch.manual_seed(0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    train_set = datasets.FashionMNIST(root=root, train=True, download=False, transform=tf)
    test_set = datasets.FashionMNIST(root=root, train=False, download=False, transform=tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=64, shuffle=False, num_workers=workers)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    crit, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01)
    out = []
    for _ in range(epochs):
        model.train()
        start, total, steps = time.perf_counter(), 0.0, 0
        for x, y in train_loader:
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1  # the notebook's running_loss += loss.item()
        train_s = time.perf_counter() - start
        model.eval()
        start, test_sum = time.perf_counter(), 0.0
        with torch.no_grad():
            for x, y in test_loader:
                test_sum += crit(model(x), y).item() * len(y)
        out.append({"wall_s": train_s, "eval_s": time.perf_counter() - start,
                    "train_loss": total / steps, "test_loss": test_sum / len(test_set)})
    return {"epochs": out, "train_loss": out[-1]["train_loss"], "test_loss": out[-1]["test_loss"], "device": "cpu"}


def gpujob_run(root: Path, epochs: int, threads: int, runs_dir: Path, overrides: list[str]) -> dict:
    """The real CLI in a subprocess; its run folder's timing.json and summary.json are the result."""
    cli = Path(sys.executable).parent / "gpujob"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "runner.cli"]
    cmd += ["run", str(REPO / "jobs/fashion_mlp.yaml"), "--set", f"train.epochs={epochs}",
            "--set", f"data.root={root}", "--runs-dir", str(runs_dir)]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    # OMP_NUM_THREADS is what torch reads at start-up for its intra-op pool: same threads as the seeds' loop.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"gpujob failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    folder = Path(proc.stdout.strip().splitlines()[-1])  # the CLI's last line is the run folder
    timing = json.loads((folder / "timing.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    losses = [r for r in map(json.loads, lines) if r["kind"] == "epoch"]  # per-epoch losses, to compare curves
    return {"epochs": [{"wall_s": e["wall_s"], "eval_s": e["eval_s"], "data_s": e["data_s"],
                        "train_loss": r["loss"], "test_loss": r["test_loss"]} for e, r in zip(timing["epochs"], losses)],
            "train_loss": summary["train_loss"], "test_loss": summary["test_loss"], "device": summary["device"]}


def per_epoch(result: dict) -> tuple[float, float]:
    """Mean seconds per epoch (training loop; and incl. the test pass), skipping epoch 1 as warm-up when E > 1."""
    eps = result["epochs"][1:] or result["epochs"]
    return (statistics.mean(e["wall_s"] for e in eps), statistics.mean(e["wall_s"] + e["eval_s"] for e in eps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-root", type=Path, default=Path("data"), help="torchvision layout: ROOT/FashionMNIST/raw")
    p.add_argument("--seed-workers", type=int, default=0, help="DataLoader num_workers for the seeds' loop")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra override for gpujob only, e.g. train.compile=true (repeatable)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="seeds-vs-gpujob-") as tmp:
        root, synthetic = args.data_root.resolve(), not has_fashion_mnist(args.data_root)
        if synthetic:
            # No download here: full-size files in the real format, so the work per epoch is the same.
            root = write_fashion_mnist(Path(tmp) / "data", 60000, 10000)
            print(f"NOTE: no FashionMNIST under {args.data_root}/FashionMNIST/raw: using GENERATED FashionMNIST-format "
                  "data (60000/10000). Timings are representative; losses are NOT real FashionMNIST losses.")
        print(f"epochs {args.epochs}, torch threads {threads}, seed loader workers {args.seed_workers}, "
              f"data {'generated' if synthetic else root}" + "".join(f", gpujob --set {o}" for o in args.overrides))
        seeds = seeds_loop(root, args.epochs, args.seed_workers)
        gpujob = gpujob_run(root, args.epochs, threads, Path(tmp) / "runs", args.overrides)

    s_train, s_full = per_epoch(seeds)
    g_train, g_full = per_epoch(gpujob)
    counted = "epochs 2..E (epoch 1 is warm-up)" if args.epochs > 1 else "epoch 1"
    print(f"\nseconds per epoch, mean over {counted}")
    print(f"{'':24}{'seeds loop':>12}{'gpujob':>12}{'seeds/gpujob':>14}")
    print(f"{'train loop':24}{s_train:12.3f}{g_train:12.3f}{s_train / g_train:13.1f}x")
    print(f"{'train + test pass':24}{s_full:12.3f}{g_full:12.3f}{s_full / g_full:13.1f}x")
    print(f"{'final train loss':24}{seeds['train_loss']:12.4f}{gpujob['train_loss']:12.4f}")
    print(f"{'final test loss':24}{seeds['test_loss']:12.4f}{gpujob['test_loss']:12.4f}")
    print(f"{'device':24}{seeds['device']:>12}{gpujob['device']:>12}")

    results = {"epochs": args.epochs, "threads": threads, "seed_workers": args.seed_workers, "gpujob_set": args.overrides,
               "data": "generated" if synthetic else str(root), "torch": torch.__version__,
               "host": socket.gethostname(), "cpu_count": os.cpu_count(),
               "seeds": {**seeds, "epoch_s": s_train, "epoch_with_test_s": s_full},
               "gpujob": {**gpujob, "epoch_s": g_train, "epoch_with_test_s": g_full},
               "ratio_epoch": s_train / g_train, "ratio_epoch_with_test": s_full / g_full}
    out = args.out or REPO / "benchmarks/results" / f"seeds_vs_gpujob-{socket.gethostname() or 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
