"""The CUDA paths gpujob had never run on a GPU, through its real CLI: mixed precision in bf16 and in
fp16 (with the gradient scaler), a checkpoint and resume (SIGTERM in the middle of a run, then
`gpujob run SPEC --run-dir DIR --resume`) compared with the run that never stopped, and the error a
user gets asking for a precision the device lacks.

    python3 benchmarks/cuda_paths.py --device cuda --out FILE    # benchmarks/gpu_check.sh runs it
    uv run python benchmarks/cuda_paths.py --device cpu          # the same checks, small, on a CPU

On CUDA the job is ResNet-18 on 16,384 generated 3x32x32 images at batch 256, 3 epochs; on a CPU a
small CNN on 2,048. Where a resumed run is not bit-identical, a second uninterrupted run measures how
far two runs that never stopped differ (cuDNN's autotuned kernels may differ between processes), and
the resumed run is judged against that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TIMING_ONLY = {"samples_per_s", "wall_s"}  # differ between any two runs


def job(device: str, precision: str) -> dict:
    cuda = device == "cuda"
    return {"name": f"cuda-paths-{precision}", "model": {"name": "resnet18" if cuda else "cnn"},
            "data": {"dataset": "synthetic", "batch_size": 256 if cuda else 64,
                     "synthetic": {"shape": [3, 32, 32], "num_classes": 10, "train_samples": 16384 if cuda else 2048,
                                   "test_samples": 1024 if cuda else 256}},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"},
            "train": {"epochs": 3, "seed": 0, "precision": precision, "log_every_steps": 4},
            "resources": {"timeout_minutes": 10}}


def write_spec(work: Path, spec: dict, name: str) -> Path:
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def gpujob(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tail(text: str, n: int = 1200) -> str:
    return text[-n:]


def read_run(run: Path) -> dict:
    """What a finished run says of itself: summary, the loss curve, the gradient scaler's last state."""
    import torch

    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m["loss"] for m in metrics if m["kind"] == "step"]
    checkpoints = sorted((run / "checkpoints").glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    scaler = torch.load(checkpoints[-1], weights_only=False, map_location="cpu")["scaler"] if checkpoints else None
    return {"device": summary["device"], "device_name": summary["device_name"], "precision": summary["precision"],
            "train_loss": summary["train_loss"], "test_loss": summary["test_loss"],
            "test_accuracy": summary["test_accuracy"], "samples_per_s": summary["samples_per_s"],
            "first_logged_loss": steps[0] if steps else None, "losses_finite": all(map(math.isfinite, steps)),
            "scaler_state": {k: v for k, v in (scaler or {}).items() if isinstance(v, (int, float))},
            "resumed": summary["resumed"]}


def compare_runs(a: Path, b: Path) -> dict:
    """Weights (model.pt) and the loss curve (metrics.jsonl less its clocks) of two runs."""
    import torch

    wa, wb = (torch.load(run / "model.pt", map_location="cpu") for run in (a, b))
    same_keys = wa.keys() == wb.keys()
    identical = same_keys and all(torch.equal(wa[k], wb[k]) for k in wa)
    floats = [k for k in wa if k in wb and wa[k].is_floating_point()]
    max_abs = max(((wa[k].double() - wb[k].double()).abs().max().item() for k in floats), default=0.0)
    scale = max((wa[k].double().abs().max().item() for k in floats), default=1.0)
    ca, cb = ([{k: v for k, v in json.loads(line).items() if k not in TIMING_ONLY}
               for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b))
    same_steps = [(m["kind"], m["step"]) for m in ca] == [(m["kind"], m["step"]) for m in cb]
    loss_diff = max((abs(x["loss"] - y["loss"]) for x, y in zip(ca, cb)), default=0.0) if same_steps else None
    return {"weights_bit_identical": identical, "weights_max_abs_diff": max_abs,
            "weights_max_abs_diff_relative": max_abs / scale if scale else None, "curve_identical": ca == cb,
            "curve_same_steps": same_steps, "curve_max_loss_diff": loss_diff}


def wait_for_epoch_2_step(run: Path, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Until a step of epoch 2 is logged (the stop then lands mid-epoch, after an epoch was closed)."""
    deadline, metrics = time.monotonic() + timeout_s, run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if record["kind"] == "step" and record["epoch"] >= 2:
                    return True
        time.sleep(0.005)
    return False


def check_amp(work: Path, device: str, precision: str) -> dict:
    spec = write_spec(work, job(device, precision), f"job-{precision}")
    started = time.perf_counter()
    out = gpujob("run", spec, "--run-dir", work / f"reference-{precision}")
    result = {"exit_code": out.returncode, "seconds": time.perf_counter() - started}
    if out.returncode != 0:
        return {**result, "ok": False, "output": tail(out.stdout + out.stderr)}
    run = read_run(work / f"reference-{precision}")
    learned = run["first_logged_loss"] is not None and run["train_loss"] < run["first_logged_loss"]
    scaler_ok = bool(run["scaler_state"]) == (precision == "fp16")  # the scaler is on for fp16 alone
    return {**result, **run, "loss_went_down": learned, "scaler_enabled": bool(run["scaler_state"]),
            "ok": run["precision"] == precision and run["losses_finite"] and learned and scaler_ok}


def check_resume(work: Path, device: str, precision: str) -> dict:
    spec = work / f"job-{precision}.yaml"
    reference, run = work / f"reference-{precision}", work / f"stopped-{precision}"
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--run-dir", str(run)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reached = wait_for_epoch_2_step(run, proc, 120)
        if reached:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = {"signal_sent": reached, "stop_exit_code": proc.returncode,
              "checkpoints_after_stop": len(list((run / "checkpoints").glob("step-*.pt"))),
              "stop_message": tail(stderr, 400)}
    if proc.returncode != 143:
        return {**result, "ok": False, "verdict": "the run was not stopped by SIGTERM (expected exit 143)"}
    resumed = gpujob("run", spec, "--run-dir", run, "--resume")
    result["resume_exit_code"] = resumed.returncode
    if resumed.returncode != 0:
        return {**result, "ok": False, "verdict": "resume failed", "output": tail(resumed.stdout + resumed.stderr)}
    timing = json.loads((run / "timing.json").read_text())
    result["interruptions"] = timing["interruptions"]
    result["against_uninterrupted"] = diff = compare_runs(reference, run)
    if diff["weights_bit_identical"] and diff["curve_identical"]:
        return {**result, "ok": True, "verdict": "bit-identical to the uninterrupted run"}
    # Not identical: is it the resume, or do two runs that never stopped differ as much?
    again = gpujob("run", spec, "--run-dir", work / f"repeat-{precision}")
    if again.returncode != 0:
        return {**result, "ok": False, "verdict": "differs; the repeat run failed", "output": tail(again.stderr)}
    result["two_uninterrupted_runs"] = noise = compare_runs(reference, work / f"repeat-{precision}")
    within = (noise["weights_max_abs_diff"] > 0 and diff["curve_same_steps"]
              and diff["weights_max_abs_diff"] <= 2 * noise["weights_max_abs_diff"])
    verdict = (f"not bit-identical; within run-to-run noise (max |dw| {diff['weights_max_abs_diff']:.3g} resumed vs "
               f"{noise['weights_max_abs_diff']:.3g} between two uninterrupted runs; tolerance: 2x that)" if within else
               f"differs beyond run-to-run noise (max |dw| {diff['weights_max_abs_diff']:.3g} vs "
               f"{noise['weights_max_abs_diff']:.3g} between two uninterrupted runs)")
    return {**result, "ok": within, "verdict": verdict}


def check_precision_error(work: Path) -> dict:
    """fp16 with no GPU in sight (CUDA_VISIBLE_DEVICES empty): the one line a user gets. And, as text only,
    what a card without bf16 says (no such card here: an H100 has both)."""
    from runner.training.setup import precision_problem

    spec = write_spec(work, {**job("cpu", "fp16"), "name": "no-fp16-here"}, "job-fp16-cpu")
    out = gpujob("run", spec, "--run-dir", work / "fp16-on-cpu", env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    message = (out.stderr.strip().splitlines() or [""])[-1]
    expected = "train.precision: fp16 needs a CUDA or MPS GPU"
    return {"exit_code": out.returncode, "message": message, "traceback": "Traceback" in out.stderr,
            "ok": out.returncode == 2 and expected in message and "Traceback" not in out.stderr,
            "bf16_on_a_card_without_it": precision_problem("bf16", "cuda", "Tesla T4", 7.5)}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=None, help="start no check past this many seconds")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("cuda_paths: --device cuda, but torch sees no CUDA device")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every gpujob below runs on the CPU
    began = time.perf_counter()
    precisions = ("bf16", "fp16") if args.device == "cuda" else ("bf16",)  # fp16 on a CPU is the error below
    results = {"benchmark": "cuda_paths", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device,
               "torch": torch.__version__, "cuda": torch.version.cuda,
               "bf16_supported": torch.cuda.is_bf16_supported() if args.device == "cuda" else None,
               "checks": {}, "skipped": []}
    plan = [(f"amp_{p}", check_amp, p) for p in precisions] + [(f"resume_{p}", check_resume, p) for p in precisions]
    plan.append(("precision_error", None, None))
    with tempfile.TemporaryDirectory(prefix="cuda-paths-") as tmp:
        work = Path(tmp)
        for name, check, precision in plan:
            if args.budget_s and time.perf_counter() - began > args.budget_s:
                results["skipped"].append(name)
                continue
            print(f"running {name} ...", flush=True)
            started = time.perf_counter()
            try:
                if check is None:
                    outcome = check_precision_error(work)
                elif check is check_resume and results["checks"].get(f"amp_{precision}", {}).get("exit_code") != 0:
                    outcome = {"ok": False, "verdict": f"no uninterrupted amp_{precision} run to compare with"}
                else:
                    outcome = check(work, args.device, precision)
            except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, RuntimeError) as err:
                outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            outcome["check_s"] = time.perf_counter() - started
            results["checks"][name] = outcome
            print(f"  {'ok' if outcome['ok'] else 'FAILED'} ({outcome['check_s']:.1f} s) "
                  f"{outcome.get('verdict') or outcome.get('message') or outcome.get('error') or ''}", flush=True)
    results["elapsed_s"] = time.perf_counter() - began
    results["all_ok"] = all(c["ok"] for c in results["checks"].values()) and not results["skipped"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, c in results["checks"].items():
        extra = {k: c[k] for k in ("precision", "test_accuracy", "samples_per_s", "scaler_state") if k in c}
        print(f"{name:<16} {'ok' if c['ok'] else 'FAILED':<7} {extra or ''}")
    sys.exit(0 if results["all_ok"] else 1)


if __name__ == "__main__":
    main()
