"""gpujob's real CLI against a hand-written tight loop and the classic notebook loop: same model, data,
optimizer, schedule, batch, precision and epochs, on one device, in one run.

Two cases: (A) ResNet-18 on CIFAR-10-shaped data (gpujob's `synthetic` dataset, 3x32x32 uint8 images,
50,000 on CUDA) at batch 512 in bf16; (B) the classic notebook's SimpleNN (784-128-10, ReLU) on
FashionMNIST-format files (60,000 x 28x28, written by tests/fashion_idx.py) at batch 64 in fp32, as
jobs/fashion_mlp.yaml runs it. Each is measured three ways, without and with torch.compile:

- gpujob: `python -m runner.cli run SPEC --run-dir DIR`, read back from timing.json and summary.json;
- tight loop: written by hand with gpujob's optimisations (the split on the device as uint8 and
  normalised per batch there, channels_last for the CNN on CUDA, autocast, a fused optimizer step on
  CUDA, cudnn.benchmark, TF32 where the precision allows it, no host sync inside the step);
- notebook loop: a torchvision-style Dataset (PIL image, ToTensor, Normalize per sample) through a
  DataLoader, batches copied to the device per step, `loss.item()` every step, as in
  benchmarks/seeds_vs_gpujob.py.

Every loop runs in its own process (this script again, with --child), so each pays its own start-up
and its peak memory is its own. Samples/s is the mean over the epochs after the first (epoch 1 holds
the warm-up and any compile); FLOPs per sample are counted once, by runner/flops.py, for all three.

    uv run python benchmarks/gpu_speed.py --device cpu     # small sizes: about 3 minutes on a 2-core VM
    python3 benchmarks/gpu_speed.py --device cuda          # full sizes; benchmarks/gpu_check.sh runs it
"""

from __future__ import annotations

import time

STARTED = time.time()  # a child's own start, before its imports (its first step is also timed from its spawn)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `runner` and `tests.fashion_idx`, when run as a script

import torch  # noqa: E402

GOAL = 0.95  # gpujob within 5% of the tight loop
LOOPS = ("gpujob", "tight", "notebook")
SYNTHETIC_NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # what runner/datasets.py gives `synthetic`
FASHION_NORM = ((0.2860,), (0.3530,))
EVAL_BATCH = 1024


# ---- the cases ------------------------------------------------------------------------------

def cases(args) -> dict[str, dict]:
    """What each case trains, the same for all three loops."""
    common = {"device": args.device, "seed": 0, "notebook_workers": args.notebook_workers}
    return {
        "resnet18": {**common, "model": "resnet18", "dataset": "synthetic", "shape": [3, 32, 32], "classes": 10,
                     "train_samples": args.resnet_samples, "test_samples": args.resnet_test_samples,
                     "batch": args.resnet_batch, "precision": "bf16", "epochs": args.resnet_epochs,
                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                                   "schedule": "cosine"}},
        "mlp": {**common, "model": "mlp", "dataset": "fashion_mnist", "shape": [1, 28, 28], "classes": 10,
                "train_samples": args.mlp_samples, "test_samples": args.mlp_test_samples,
                "batch": args.mlp_batch, "precision": "fp32", "epochs": args.mlp_epochs,
                "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "schedule": "none"}},
    }


def gpujob_spec(case: dict, compile_: bool) -> dict:
    o = case["optimizer"]
    data = {"dataset": case["dataset"], "batch_size": case["batch"]}
    if case["dataset"] == "synthetic":
        data["synthetic"] = {"shape": case["shape"], "num_classes": case["classes"],
                             "train_samples": case["train_samples"], "test_samples": case["test_samples"]}
    else:
        data.update(root=case["root"], download=False)
    return {"name": f"gpu-speed-{case['model']}", "model": {"name": case["model"]}, "data": data,
            "optimizer": o, "train": {"epochs": case["epochs"], "seed": case["seed"], "precision": case["precision"],
                                      "compile": compile_},
            "resources": {"timeout_minutes": 30}}


# ---- the child processes: data, model, and the two baseline loops -----------------------------

def load_split(case: dict, train: bool):
    """(uint8 images N,C,H,W on the CPU, int64 labels): the same samples gpujob loads."""
    if case["dataset"] == "synthetic":
        # runner/datasets.py's `synthetic` recipe, step for step: one noisy prototype per class.
        shape, classes = tuple(case["shape"]), case["classes"]
        protos = torch.rand((classes, *shape), generator=torch.Generator().manual_seed(99)) * 255
        n = case["train_samples"] if train else case["test_samples"]
        gen = torch.Generator().manual_seed(1 if train else 2)
        labels = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.randn((n, *shape), generator=gen) * 60
        return (protos[labels] + noise).clamp(0, 255).to(torch.uint8), labels
    from torchvision import datasets

    ds = datasets.FashionMNIST(root=case["root"], train=train, download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def build_model(case: dict):
    """The same architectures as runner/models.py, written out here."""
    from torch import nn

    if case["model"] == "mlp":
        c, h, w = case["shape"]
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 128), nn.ReLU(), nn.Linear(128, case["classes"]))
    from torchvision import models

    model = models.resnet18(weights=None, num_classes=case["classes"])
    model.conv1 = nn.Conv2d(case["shape"][0], 64, kernel_size=3, stride=1, padding=1, bias=False)  # small images
    model.maxpool = nn.Identity()
    return model


def build_optimizer(case: dict, model, total_steps: int, fused: bool):
    o = case["optimizer"]
    opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                          **({"fused": True} if fused else {}))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
             if o["schedule"] == "cosine" else None)
    return opt, sched


def autocast_for(case: dict, device):
    if case["precision"] == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if case["precision"] == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tight_loop(case: dict, compile_: bool, clock: dict) -> list[dict]:
    """The hand-written loop: everything on the device, nothing waits for it inside the step."""
    import torch.nn.functional as F

    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = case["precision"] != "fp32"
    torch.manual_seed(case["seed"])
    (xtr, ytr), (xte, yte) = load_split(case, True), load_split(case, False)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))  # uint8 on the device
    mean, std = SYNTHETIC_NORM if case["dataset"] == "synthetic" else FASHION_NORM
    std_t = torch.tensor(std[: case["shape"][0]], device=device).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std_t), -torch.tensor(mean[: case["shape"][0]], device=device).view(1, -1, 1, 1) / std_t
    clock["data_loaded_at"] = time.time()
    net = build_model(case).to(device)
    if cuda and case["model"] != "mlp":
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compile_ else net
    batch, n = case["batch"], len(ytr)
    steps = n // batch
    opt, sched = build_optimizer(case, net, steps * case["epochs"], fused=cuda)
    autocast = autocast_for(case, device)
    clock["model_built_at"] = time.time()
    epochs = []
    for epoch in range(1, case["epochs"] + 1):
        start = time.perf_counter()
        # gpujob's batch order (runner/batches.py train_order), so both loops take the same batches
        order = torch.randperm(n, generator=torch.Generator().manual_seed(case["seed"] * 100_003 + epoch))
        order = order[: steps * batch].view(steps, batch).to(device, non_blocking=True)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            step_start = time.perf_counter()
            idx = order[i]
            x = xtr.index_select(0, idx).float().mul_(scale).add_(shift)
            y = ytr.index_select(0, idx)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.detach()
            if "first_step_at" not in clock:
                sync(device)  # once: the first step's end, honestly timed
                clock["first_step_at"] = time.time()
                clock["first_step_wall_s"] = time.perf_counter() - step_start
        sync(device)
        wall = time.perf_counter() - start
        record = {"epoch": epoch, "wall_s": wall, "samples": steps * batch, "samples_per_s": steps * batch / wall,
                  "train_loss": loss_sum.item() / steps}
        record.update(evaluate(net, xte, yte, scale, shift, autocast))
        epochs.append(record)
    return epochs


def evaluate(net, xte, yte, scale, shift, autocast) -> dict:
    """The test split, uncompiled as gpujob evaluates it (not timed as training)."""
    import torch.nn.functional as F

    start = time.perf_counter()
    net.eval()
    loss, correct = torch.zeros((), dtype=torch.float64, device=xte.device), torch.zeros((), device=xte.device)
    with torch.no_grad(), autocast():
        for i in range(0, len(yte), EVAL_BATCH):
            x, y = xte[i:i + EVAL_BATCH].float().mul_(scale).add_(shift), yte[i:i + EVAL_BATCH]
            out = net(x)
            loss += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
    net.train()
    return {"eval_s": time.perf_counter() - start, "test_loss": loss.item() / len(yte),
            "test_accuracy": correct.item() / len(yte)}


class PerSampleImages(torch.utils.data.Dataset):
    """torchvision's CIFAR10, minus the file: HWC uint8 arrays, a PIL image per sample, then the transform."""

    def __init__(self, images, labels, transform):
        self.data, self.targets, self.transform = images.permute(0, 2, 3, 1).numpy(), labels.tolist(), transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def notebook_loop(case: dict, compile_: bool, clock: dict) -> list[dict]:
    """The classic notebook: a DataLoader over per-sample transforms, each batch copied to the device,
    the running loss read every step."""
    from torch import nn
    from torchvision import datasets, transforms

    device = torch.device(case["device"])
    mean, std = SYNTHETIC_NORM if case["dataset"] == "synthetic" else FASHION_NORM
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    if case["dataset"] == "synthetic":
        train_set, test_set = (PerSampleImages(*load_split(case, split), tf) for split in (True, False))
    else:
        train_set, test_set = (datasets.FashionMNIST(root=case["root"], train=split, download=False, transform=tf)
                               for split in (True, False))
    workers = case["notebook_workers"]
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=case["batch"], shuffle=True, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=case["batch"], shuffle=False, num_workers=workers)
    clock["data_loaded_at"] = time.time()
    torch.manual_seed(case["seed"])
    net = build_model(case).to(device)
    model = torch.compile(net) if compile_ else net
    crit = nn.CrossEntropyLoss()
    opt, sched = build_optimizer(case, net, len(train_loader) * case["epochs"], fused=False)
    autocast = autocast_for(case, device)
    clock["model_built_at"] = time.time()
    epochs = []
    for epoch in range(1, case["epochs"] + 1):
        net.train()
        start, running, steps = time.perf_counter(), 0.0, 0
        for x, y in train_loader:
            step_start = time.perf_counter()
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            with autocast():
                loss = crit(model(x), y)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            running, steps = running + loss.item(), steps + 1  # the notebook's running_loss += loss.item()
            if "first_step_at" not in clock:
                clock["first_step_at"] = time.time()  # loss.item() has already waited for the device
                clock["first_step_wall_s"] = time.perf_counter() - step_start
        wall = time.perf_counter() - start
        eval_start, test_sum, correct = time.perf_counter(), 0.0, 0
        net.eval()
        with torch.no_grad(), autocast():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                out = net(x)
                test_sum += crit(out.float(), y).item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
        epochs.append({"epoch": epoch, "wall_s": wall, "samples": len(train_set),
                       "samples_per_s": len(train_set) / wall, "train_loss": running / steps,
                       "eval_s": time.perf_counter() - eval_start, "test_loss": test_sum / len(test_set),
                       "test_accuracy": correct / len(test_set)})
    return epochs


def run_child(kind: str, job_file: Path, result_file: Path) -> None:
    job = json.loads(job_file.read_text())
    case, compile_ = job["case"], job["compile"]
    device = torch.device(case["device"])
    clock = {"imported_at": time.time()}
    epochs = (tight_loop if kind == "tight" else notebook_loop)(case, compile_, clock)
    from runner.training.flops import peak_tflops  # after the loop: never part of its time

    typical = (epochs[0]["wall_s"] - clock["first_step_wall_s"]) / max(epochs[0]["samples"] // case["batch"] - 1, 1)
    result = {"epochs": epochs, "clock": clock, "process_started_at": STARTED,
              "compile_s": max(clock["first_step_wall_s"] - typical, 0.0) if compile_ else None,  # gpujob's rule
              "peak_memory_bytes": peak_memory_bytes(device), "peak_tflops": peak_tflops(device, case["precision"]),
              "device_name": device_name(device), "threads": torch.get_num_threads()}
    result_file.write_text(json.dumps(result, indent=2) + "\n")


def peak_memory_bytes(device) -> int:
    """CUDA's allocator peak; on a CPU this process's own peak RSS (VmHWM: Linux's ru_maxrss would carry
    the parent's peak across fork and exec)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())


# ---- the parent: run each loop in its own process, and read what it did -----------------------

def child_env(args, tag: str = "") -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # gpujob takes a GPU wherever there is one: here there must be none
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    # torch.compile's on-disk caches: shared (a later compile of the same model reuses the first one's kernels)
    # or, with --cold-compile, one per run, so every compile time is a cold one.
    cache = Path(args.inductor_cache) / (tag if args.cold_compile else "shared")
    env["TORCHINDUCTOR_CACHE_DIR"], env["TRITON_CACHE_DIR"] = str(cache), str(cache / "triton")
    return env


def run_gpujob(case: dict, compile_: bool, work: Path, env: dict, timeout_s: float, tag: str) -> dict:
    import yaml

    spec, run_dir = work / f"{tag}.yaml", work / f"run-{tag}"
    spec.write_text(yaml.safe_dump(gpujob_spec(case, compile_), sort_keys=False))
    spawned = time.time()
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(spec), "--run-dir", str(run_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"gpujob exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    timing = json.loads((run_dir / "timing.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    first_step_at = timing["started_at"] + timing["time_to_first_step_s"]
    epochs = [{"epoch": e["epoch"], "wall_s": e["wall_s"], "samples": round(e["samples_per_s"] * e["wall_s"]),
               "samples_per_s": e["samples_per_s"], "eval_s": e["eval_s"], "data_s": e["data_s"]}
              for e in timing["epochs"]]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for e, m in zip(epochs, [m for m in metrics if m["kind"] == "epoch"]):
        e.update(train_loss=m["loss"], test_loss=m["test_loss"], test_accuracy=m["test_accuracy"])
    return {"epochs": epochs, "time_to_first_step_from_spawn_s": first_step_at - spawned,
            "time_to_first_step_s_gpujob": timing["time_to_first_step_s"], "phases": timing["phases"],
            "compile_s": timing["compile_s"], "peak_memory_bytes": summary["peak_memory_bytes"],
            "peak_tflops": summary["peak_tflops_per_device"], "device_name": summary["device_name"],
            "summary": {k: summary[k] for k in ("samples_per_s", "achieved_tflops", "mfu", "flops_per_sample",
                                                "device", "precision", "data_held_on", "test_accuracy")},
            "wall_s": time.time() - spawned}


def run_loop(kind: str, case: dict, compile_: bool, work: Path, env: dict, timeout_s: float, tag: str) -> dict:
    job, result = work / f"{tag}.job.json", work / f"{tag}.out.json"
    job.write_text(json.dumps({"case": case, "compile": compile_}))
    spawned = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--job", str(job), "--result", str(result)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} loop exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    out = json.loads(result.read_text())
    c = out.pop("clock")
    out["time_to_first_step_from_spawn_s"] = c["first_step_at"] - spawned
    out["phases"] = {"imports_s": c["imported_at"] - spawned, "data_loaded_s": c["data_loaded_at"] - spawned,
                     "model_built_s": c["model_built_at"] - spawned, "first_step_s": c["first_step_at"] - spawned}
    out["wall_s"] = time.time() - spawned
    return out


def steady(result: dict, flops_per_sample: int | None) -> dict:
    """Samples/s over the epochs after the first (all of them when there is one), and what follows from it."""
    eps = result["epochs"][1:] or result["epochs"]
    rate = sum(e["samples"] for e in eps) / sum(e["wall_s"] for e in eps)
    achieved = flops_per_sample * rate / 1e12 if flops_per_sample else None
    peak = result.get("peak_tflops")
    return {"samples_per_s": rate, "epochs_counted": [e["epoch"] for e in eps],
            "best_epoch_samples_per_s": max(e["samples"] / e["wall_s"] for e in eps), "achieved_tflops": achieved,
            "mfu": achieved / peak if achieved and peak else None}


def flops_per_sample(case: dict) -> int | None:
    from runner.training.flops import training_flops_per_sample
    from runner.spec.model import ModelSpec

    return training_flops_per_sample(ModelSpec(name=case["model"]), tuple(case["shape"]), case["classes"])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def measure(args) -> dict:
    began = time.perf_counter()
    deadline = began + args.budget_s if args.budget_s else None
    results = {"benchmark": "gpu_speed", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device,
               "torch": torch.__version__, "python": platform.python_version(), "host": socket.gethostname(),
               "cpu_count": os.cpu_count(), "machine": platform.machine(), "args": {k: str(v) for k, v in vars(args).items()},
               "goal_gpujob_over_tight": GOAL, "load_average_at_start": os.getloadavg(),
               "cases": {}, "skipped": [], "failed": []}
    with tempfile.TemporaryDirectory(prefix="gpu-speed-") as tmp:
        work = Path(tmp)
        all_cases = {name: case for name, case in cases(args).items() if name in args.models}
        if "mlp" in all_cases:
            # In a process of its own: numpy's temporaries would raise this process's peak RSS, which Linux
            # hands down to every child (gpujob's summary reads ru_maxrss on a CPU).
            root = work / "data"
            make_idx = ("import sys; from tests.fashion_idx import write_fashion_mnist as w; "
                     "w(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))")
            subprocess.run([sys.executable, "-c", make_idx, str(root), str(args.mlp_samples), str(args.mlp_test_samples)],
                           cwd=REPO, check=True)
            all_cases["mlp"]["root"] = str(root)
        for name, case in all_cases.items():
            results["cases"][name] = {"case": {k: v for k, v in case.items() if k != "root"},
                                      "flops_per_sample": flops_per_sample(case), "runs": {"off": {}, "on": {}}}
        # The figures that matter most first: a budget cut (--budget-s) drops the last ones.
        plan = [(name, False, kind) for name in all_cases for kind in LOOPS]
        plan += [(name, True, kind) for kind in ("gpujob", "tight") for name in all_cases if name in args.compile_models]
        plan += [(name, True, "notebook") for name in all_cases if name in args.compile_models]
        # Repeats alternate the loops, so a busy machine's slow minute does not fall on one of them alone.
        for repeat, (name, compile_, kind) in [(r, item) for r in range(args.repeats) for item in plan]:
            label = f"{name} {kind} compile={'on' if compile_ else 'off'}" + (f" #{repeat + 1}" if args.repeats > 1 else "")
            left = deadline - time.perf_counter() if deadline else args.child_timeout_s
            if left < 20:
                results["skipped"].append(f"{label}: the time budget (--budget-s {args.budget_s}) was spent")
                print(f"skipped {label}: budget spent", flush=True)
                continue
            print(f"running {label} ...", flush=True)
            timeout, tag = min(left, args.child_timeout_s), f"{kind}-{name}-compile-{compile_}-{repeat}"
            env = child_env(args, tag)
            try:
                if kind == "gpujob":
                    out = run_gpujob(all_cases[name], compile_, work, env, timeout, tag)
                else:
                    out = run_loop(kind, all_cases[name], compile_, work, env, timeout, tag)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as err:
                results["failed"].append(f"{label}: {err}")
                print(f"FAILED {label}: {str(err)[-600:]}", flush=True)
                continue
            out["steady"] = steady(out, results["cases"][name]["flops_per_sample"])
            keep(results["cases"][name]["runs"]["on" if compile_ else "off"], kind, out)
            print(f"  {out['steady']['samples_per_s']:.1f} samples/s, first step {out['time_to_first_step_from_spawn_s']:.1f} s"
                  f" from spawn, {out['wall_s']:.1f} s in all", flush=True)
            add_ratios(results)
            write(results, args)
    results["elapsed_s"] = time.perf_counter() - began
    results["load_average_at_end"] = os.getloadavg()  # other work on the machine: a CPU run's noise
    results["device_name"] = next((r["device_name"] for c in results["cases"].values() for m in c["runs"].values()
                                   for r in m.values()), None)
    write(results, args)
    return results


def keep(runs: dict, kind: str, out: dict) -> None:
    """The fastest of the repeats (the least disturbed by anything else on the machine), with every
    repeat's samples/s beside it."""
    before = runs.get(kind)
    rates = (before["repeats_samples_per_s"] if before else []) + [out["steady"]["samples_per_s"]]
    if before is None or out["steady"]["samples_per_s"] > before["steady"]["samples_per_s"]:
        runs[kind] = out
    runs[kind]["repeats_samples_per_s"] = rates


def add_ratios(results: dict) -> None:
    for case in results["cases"].values():
        case["ratios"] = {}
        for mode, runs in case["runs"].items():
            g = runs.get("gpujob")
            for kind in ("tight", "notebook"):
                if g and kind in runs:
                    case["ratios"][f"gpujob_over_{kind}_compile_{mode}"] = (
                        g["steady"]["samples_per_s"] / runs[kind]["steady"]["samples_per_s"])


def out_path(args, results: dict | None = None) -> Path:
    """--out, or benchmarks/results/gpu_speed-LABEL.json: cpu-HOST, or the GPU's name as the first run
    reported it (this process never touches CUDA itself: the children have the device to themselves)."""
    if args.out:
        return args.out
    if not args.device_label:
        if args.device == "cpu":
            args.device_label = "cpu-" + socket.gethostname()
        else:
            names = [r["device_name"] for c in (results or {}).get("cases", {}).values()
                     for m in c["runs"].values() for r in m.values()]
            args.device_label = slug(names[0]) if names else None
    return REPO / "benchmarks/results" / f"gpu_speed-{args.device_label or 'cuda'}.json"


def write(results: dict, args) -> None:
    path = out_path(args, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


# ---- the report ---------------------------------------------------------------------------------

def fmt(value, spec: str, dash: str = "-") -> str:
    return dash if value is None else format(value, spec)


def report(results: dict) -> None:
    print(f"\n{results['device_name']} ({results['device']}), torch {results['torch']}, {results['date']}")
    for name, c in results["cases"].items():
        case = c["case"]
        print(f"\n{name}: {case['dataset']} {'x'.join(map(str, case['shape']))}, {case['train_samples']} train samples, "
              f"batch {case['batch']}, {case['precision']}, {case['epochs']} epochs; "
              f"{fmt(c['flops_per_sample'] and c['flops_per_sample'] / 1e6, ',.1f')} MFLOP per training sample")
        print(f"  {'loop':<10}{'compile':>8}{'samples/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'1st step s':>12}"
              f"{'compile s':>11}{'peak MiB':>10}{'train loss':>12}")
        for mode, runs in c["runs"].items():
            for kind in LOOPS:
                r = runs.get(kind)
                if r is None:
                    continue
                s = r["steady"]
                print(f"  {kind:<10}{mode:>8}{s['samples_per_s']:>12.1f}{fmt(s['achieved_tflops'], '.3f'):>10}"
                      f"{fmt(s['mfu'] and 100 * s['mfu'], '.1f'):>7}%{r['time_to_first_step_from_spawn_s']:>12.2f}"
                      f"{fmt(r['compile_s'], '.2f'):>11}{r['peak_memory_bytes'] / 2**20:>10.0f}"
                      f"{fmt(r['epochs'][-1].get('train_loss'), '.4f'):>12}")
        for key, value in c.get("ratios", {}).items():
            goal = f"  (goal >= {GOAL}: {'met' if value >= GOAL else 'NOT met'})" if "tight" in key else ""
            print(f"  {key:<38}{value:7.3f}x{goal}")
    repeats = int(results["args"]["repeats"])
    print("\nsamples/s: mean over epochs 2..E (epoch 1 holds the warm-up and compile)"
          + (f", the fastest of {repeats} alternating repeats" if repeats > 1 else "")
          + "; 1st step: seconds from the process's spawn to the end of the first optimizer step (gpujob's own "
          "timing.json figure starts later, at `gpujob run`'s start, and is in the JSON); compile s: the first "
          "step's extra time (gpujob's rule), "
          + ("each a cold compile; " if results["args"]["cold_compile"] == "True" else
             "cold for the first compiled run, the later ones reuse its on-disk kernels; ")
          + f"load average {results['load_average_at_start'][0]:.1f} at the start, "
          f"{results.get('load_average_at_end', [0])[0]:.1f} at the end")
    for line in results["skipped"] + results["failed"]:
        print(f"NOTE: {line[:400]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="resnet18,mlp", help="comma-separated: resnet18, mlp")
    p.add_argument("--no-compile", action="store_true", help="skip every torch.compile run")
    p.add_argument("--compile-models", default=None,
                   help="which cases also run compiled (default: both on CUDA; mlp alone on CPU, where compiling "
                        "and training ResNet-18 takes minutes)")
    p.add_argument("--resnet-samples", type=int, default=None, help="train samples (50000 on CUDA, 256 on CPU)")
    p.add_argument("--resnet-test-samples", type=int, default=None, help="(10000 on CUDA, 128 on CPU)")
    p.add_argument("--resnet-batch", type=int, default=None, help="(512 on CUDA, 64 on CPU)")
    p.add_argument("--resnet-epochs", type=int, default=2)
    p.add_argument("--mlp-samples", type=int, default=60000)
    p.add_argument("--mlp-test-samples", type=int, default=10000)
    p.add_argument("--mlp-batch", type=int, default=64, help="the classic notebook's 64")
    p.add_argument("--mlp-epochs", type=int, default=None, help="(3 on CUDA, 2 on CPU)")
    p.add_argument("--notebook-workers", type=int, default=None, help="DataLoader workers (2 on CUDA, 0 on CPU)")
    p.add_argument("--repeats", type=int, default=1, help="run every loop this many times, alternating; the "
                   "fastest counts (for a shared machine)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for every loop; 0: torch's default (the default on CUDA). On a CPU the "
                        "default is 1: where other work shares the cores, OpenMP's thread barriers stall whenever "
                        "one of its threads is descheduled, and epochs swing 10x; one thread gives steady ratios")
    p.add_argument("--budget-s", type=float, default=None, help="start no run past this many seconds")
    p.add_argument("--child-timeout-s", type=float, default=900)
    p.add_argument("--inductor-cache", type=Path, default=None,
                   help="where torch.compile's caches go (default: a fresh temporary folder)")
    p.add_argument("--cold-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="a cache of its own for every run, so each compile is cold and compile times compare "
                        "(default on a CPU; on CUDA off, to save device time: runs after the first compiled one "
                        "reuse its kernels, and their compile times are warm ones)")
    p.add_argument("--device-label", default=None, help="name in the results file (default: cpu-HOST or the GPU's name)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", choices=("tight", "notebook"), help=argparse.SUPPRESS)
    p.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args.child, args.job, args.result)
        return
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_speed: --device cuda, but torch sees no CUDA device")
    args.models = [m for m in args.models.split(",") if m]
    default_compiled = "resnet18,mlp" if cuda else "mlp"
    args.compile_models = [] if args.no_compile else (args.compile_models or default_compiled).split(",")
    args.resnet_samples = args.resnet_samples or (50000 if cuda else 256)
    args.resnet_test_samples = args.resnet_test_samples or (10000 if cuda else 128)
    args.resnet_batch = args.resnet_batch or (512 if cuda else 64)
    args.mlp_epochs = args.mlp_epochs or (3 if cuda else 2)
    args.cold_compile = (not cuda) if args.cold_compile is None else args.cold_compile
    args.threads = (0 if cuda else 1) if args.threads is None else args.threads
    args.notebook_workers = args.notebook_workers if args.notebook_workers is not None else (2 if cuda else 0)
    with tempfile.TemporaryDirectory(prefix="gpu-speed-inductor-") as cache:
        args.inductor_cache = args.inductor_cache or Path(cache)
        results = measure(args)
    report(results)
    print(f"\nwrote {out_path(args, results)} ({results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
