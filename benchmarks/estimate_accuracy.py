"""How good is the dry run's whole-job estimate? For each job below: `gpujob submit --dry-run`
(its "estimate" row: seconds per epoch on this CPU), then the real run, whose epochs after the
first are the truth (training plus evaluation, as timing.json records them). Prints the ratio
estimate / real per job; the aim is within 25% (a ratio between 0.75 and 1.25).

    uv run python benchmarks/estimate_accuracy.py

Writes benchmarks/results/estimate_accuracy-<hostname>.json. Run it on a quiet machine: the
dry run's few timed steps and the real run must see the same CPU.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fashion_idx import write_fashion_mnist  # noqa: E402  (FashionMNIST-format files, made here)


def jobs(scratch: Path) -> dict[str, dict]:
    fashion = write_fashion_mnist(scratch / "fashion", 10_000, 2_000)
    synthetic = {"dataset": "synthetic", "synthetic": {"shape": [3, 32, 32], "train_samples": 4096,
                                                       "test_samples": 1024}}
    return {
        "digits-cnn": {"model": {"name": "cnn"}, "data": {"dataset": "digits", "batch_size": 64},
                       "train": {"epochs": 4}},
        "digits-cnn-x2": {"model": {"name": "cnn"}, "data": {"dataset": "digits", "batch_size": 64},
                          "train": {"epochs": 4}, "resources": {"processes": 2}},
        "fashion-mlp": {"model": {"name": "mlp"}, "data": {"dataset": "fashion_mnist", "root": str(fashion),
                                                           "download": False, "batch_size": 128},
                        "train": {"epochs": 3}},
        "fashion-cnn": {"model": {"name": "cnn"}, "data": {"dataset": "fashion_mnist", "root": str(fashion),
                                                           "download": False, "batch_size": 128},
                        "train": {"epochs": 3}},
        "synthetic-cnn-32px": {"model": {"name": "cnn"}, "data": {**synthetic, "batch_size": 128},
                               "train": {"epochs": 3}},
        "synthetic-resnet18-32px": {"model": {"name": "resnet18"},
                                    "data": {**synthetic, "batch_size": 64,
                                             "synthetic": {"shape": [3, 32, 32], "train_samples": 512,
                                                           "test_samples": 256}},
                                    "train": {"epochs": 2}},
    }


def gpujob(*args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"gpujob {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpujob-estimate-") as tmp:
        scratch = Path(tmp)
        for name, sections in jobs(scratch).items():
            spec = scratch / f"{name}.yaml"
            spec.write_text(yaml.safe_dump({"name": name, **sections, "backend": "local"}))
            dry = gpujob("submit", spec, "--dry-run", "--runs-dir", scratch / "runs")
            line = next(line for line in dry.stdout.splitlines() if line.startswith("estimate"))
            estimate = float(re.search(r"~([\d,.]+) s per epoch", line).group(1).replace(",", ""))
            started = time.perf_counter()
            run = Path(gpujob("submit", spec, "--runs-dir", scratch / "runs").stdout.strip().splitlines()[-1])
            wall = time.perf_counter() - started
            epochs = json.loads((run / "timing.json").read_text())["epochs"][1:]
            real = sum(e["wall_s"] + e["eval_s"] for e in epochs) / len(epochs)
            results[name] = {"estimate_s_per_epoch": round(estimate, 3), "real_s_per_epoch": round(real, 3),
                             "ratio": round(estimate / real, 3), "run_wall_s": round(wall, 1)}
            print(f"{name:<26} estimate {estimate:8.2f} s/epoch  real {real:8.2f} s/epoch  "
                  f"ratio {estimate / real:5.2f}", flush=True)
    within = sum(0.75 <= r["ratio"] <= 1.25 for r in results.values())
    print(f"{within} of {len(results)} within 25%")
    out = REPO / "benchmarks" / "results" / f"estimate_accuracy-{socket.gethostname()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "jobs": results,
                               "within_25_percent": f"{within}/{len(results)}"}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
