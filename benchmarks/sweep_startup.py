"""Start-up paid once per machine: a 12-trial sweep of the quickstart against the same 12 trials as
12 separate `gpujob submit` calls, side by side in one run, on this machine.

    uv run python benchmarks/sweep_startup.py                      # the quickstart as written (10 epochs)
    uv run python benchmarks/sweep_startup.py --epochs 2           # shorter trials, the same start-ups

The 12 trials are optimizer.lr in (0.01, 0.003, 0.001, 0.0003) x data.batch_size in (32, 64, 128).
The sweep is one `gpujob sweep jobs/quickstart.yaml --grid ... --grid ...`; the separate calls are
`gpujob submit jobs/quickstart.yaml --set optimizer.lr=... --set data.batch_size=...`, one after
another. Each side's overhead is its wall time less its trials' own training time (the sum of their
timing.json `train_loop_s`: the epochs' steps and evaluations), so what is left is start-up: the
interpreter and imports, the spec, the run folders, data and model set-up, the launcher's worker
processes. The target (issue 25): the sweep's overhead under 10% of the separate calls'.

Both sides run with OMP_NUM_THREADS=1 (the same threads whatever the machine's load as each starts).
Writes benchmarks/results/sweep_startup-<hostname>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "quickstart.yaml"
RATES = ("0.01", "0.003", "0.001", "0.0003")
BATCHES = ("32", "64", "128")
GPUJOB = [sys.executable, "-m", "runner.cli"]


def timed(command: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return wall, done.stdout


def training_s(run_folder: Path) -> float:
    return json.loads((run_folder / "timing.json").read_text())["train_loop_s"]


def sweep_side(runs: Path, epochs: list[str], env: dict) -> dict:
    command = [*GPUJOB, "sweep", str(JOB), "--grid", f"optimizer.lr={','.join(RATES)}",
               "--grid", f"data.batch_size={','.join(BATCHES)}", "--runs-dir", str(runs), *epochs]
    wall, out = timed(command, env)
    folder = Path(out.strip().splitlines()[-1])
    trials = json.loads((folder / "sweep.json").read_text())["trials"]
    training = sum(training_s(folder / t["folder"]) for t in trials)
    return {"trials": len(trials), "wall_s": wall, "training_s": training, "overhead_s": wall - training}


def separate_side(runs: Path, epochs: list[str], env: dict) -> dict:
    walls, training = [], 0.0
    for lr, batch in itertools.product(RATES, BATCHES):
        command = [*GPUJOB, "submit", str(JOB), "--set", f"optimizer.lr={lr}", "--set", f"data.batch_size={batch}",
                   "--runs-dir", str(runs), *epochs]
        wall, out = timed(command, env)
        walls.append(wall)
        training += training_s(Path(out.strip().splitlines()[-1]))
    return {"trials": len(walls), "wall_s": sum(walls), "training_s": training, "overhead_s": sum(walls) - training,
            "per_call_wall_s": walls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="train.epochs for every trial (default: the quickstart's)")
    args = parser.parse_args()
    epochs = ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        sweep = sweep_side(Path(scratch) / "sweep", epochs, env)
        separate = separate_side(Path(scratch) / "separate", epochs, env)
    ratio = sweep["overhead_s"] / separate["overhead_s"]
    print(f"{'':<22}{'wall s':>9}{'training s':>12}{'overhead s':>12}")
    for name, side in (("sweep (1 process)", sweep), ("12 x gpujob submit", separate)):
        print(f"{name:<22}{side['wall_s']:>9.1f}{side['training_s']:>12.1f}{side['overhead_s']:>12.1f}")
    print(f"the sweep's overhead is {100 * ratio:.1f}% of the separate calls' (target: under 10%); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = REPO / "benchmarks" / "results" / f"sweep_startup-{socket.gethostname()}.json"
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epochs": args.epochs,
                                   "sweep": sweep, "separate": separate, "overhead_ratio": ratio,
                                   "load_average": os.getloadavg()[0]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
