"""Time to first step: `gpujob submit jobs/quickstart.yaml` against a bare script that does the same
work by hand (import torch, load the same digits, build the same CNN, one Adam step), on this machine.

    uv run python benchmarks/startup_vs_bare.py                 # 5 timed rounds
    uv run python benchmarks/startup_vs_bare.py --rounds 9
    python -X importtime -m runner.cli submit jobs/quickstart.yaml 2> imports.txt   # where gpujob's imports go

Both sides are started the way a user starts them, with this environment's interpreter: gpujob's
console script `gpujob submit` (the CLI, the spec, the run folder, the launcher and one worker
process), the bare script as `python -c`. gpujob's job runs with `--set train.max_steps=1`: the
first step is the same, and the rest of the job is not timed. "Wall" is from starting the command
to the end of the first step (gpujob's from its `timing.json`, `started_at` + `time_to_first_step_s`;
the bare script's from the clock it prints after its step); gpujob's own `time_to_first_step_s`
counts from the job's start (the launcher), after the CLI's. One untimed round of each first, so
both read their files from a warm page cache; then they alternate, and the medians are compared.
The target (issue 28): gpujob within 1.1x of the bare script.

Writes benchmarks/results/startup_vs_bare-<hostname>.json.
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

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "quickstart.yaml"
OVERRIDES = ["--set", "train.max_steps=1"]

# The quickstart's work, written as one would by hand: the same data (scikit-learn's digits, the same
# 80/20 split, uint8 normalised per batch), the same model and optimizer, one step on a batch of 64.
BARE = """
import time
import torch
from torch import nn
from sklearn.datasets import load_digits
imported = time.time()
digits = load_digits()
images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
labels = torch.from_numpy(digits.target).long()
order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
train = order[: int(0.8 * len(labels))]
x_train, y_train = images[train], labels[train]
loaded = time.time()
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
built = time.time()
batch = torch.randperm(len(y_train))[:64]
x = (x_train[batch].float() / 255.0 - 0.3054) / 0.3762
loss = nn.functional.cross_entropy(model(x), y_train[batch])
optimizer.zero_grad()
loss.backward()
optimizer.step()
stepped = time.time()
print(imported, loaded, built, stepped)
"""


def gpujob_round(runs_dir: Path, index: int) -> dict:
    gpujob = Path(sys.executable).with_name("gpujob")  # the venv's console script, as a user types it
    run_dir = runs_dir / f"quickstart-{index}"
    command = [str(gpujob), "submit", str(JOB), "--runs-dir", str(runs_dir), *OVERRIDES]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"startup_vs_bare: {' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])  # the last line printed is the run folder
    timing = json.loads((run_dir / "timing.json").read_text())
    first_step_at = timing["started_at"] + timing["time_to_first_step_s"]
    return {"wall_to_first_step_s": round(first_step_at - started, 3),
            "job_time_to_first_step_s": round(timing["time_to_first_step_s"], 3),
            "cli_before_job_s": round(timing["started_at"] - started, 3),
            "phases": {name: round(value, 3) for name, value in timing["phases"].items()}}


def bare_round() -> dict:
    started = time.time()
    done = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"startup_vs_bare: the bare script failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    imported, loaded, built, stepped = (float(value) for value in done.stdout.split())
    return {"wall_to_first_step_s": round(stepped - started, 3),
            "phases": {"torch_imported_s": round(imported - started, 3), "data_loaded_s": round(loaded - started, 3),
                       "model_built_s": round(built - started, 3), "first_step_s": round(stepped - started, 3)}}


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"gpujob": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-") as scratch:
        for index in range(args.rounds + 1):  # round 0 warms the page cache on both sides and is left out
            gpujob, bare = gpujob_round(Path(scratch), index), bare_round()
            if index:
                runs["gpujob"].append(gpujob)
                runs["bare"].append(bare)
                print(f"round {index}: gpujob {gpujob['wall_to_first_step_s']:6.2f} s   bare "
                      f"{bare['wall_to_first_step_s']:6.2f} s", flush=True)
    load_after = os.getloadavg()[0]

    gpujob_wall, bare_wall = median_of(runs["gpujob"], "wall_to_first_step_s"), median_of(runs["bare"],
                                                                                          "wall_to_first_step_s")
    ratio = round(gpujob_wall / bare_wall, 2)
    result = {"job": f"gpujob submit {JOB.relative_to(REPO)} {' '.join(OVERRIDES)}", "rounds": args.rounds,
              "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "load_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
              "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
              "median_wall_to_first_step_s": {"gpujob": gpujob_wall, "bare": bare_wall}, "gpujob_over_bare": ratio,
              "median_job_time_to_first_step_s": median_of(runs["gpujob"], "job_time_to_first_step_s"),
              "median_cli_before_job_s": median_of(runs["gpujob"], "cli_before_job_s"), "runs": runs}
    print(f"wall to first step   gpujob {gpujob_wall:6.2f} s   bare {bare_wall:6.2f} s   gpujob / bare {ratio:.2f}x   "
          f"(median of {args.rounds}; target 1.1x)")
    print(f"gpujob's split       CLI before the job {result['median_cli_before_job_s']:.2f} s, job to first step "
          f"{result['median_job_time_to_first_step_s']:.2f} s (timing.json)")
    print(f"load average         {load_before:.2f} before, {load_after:.2f} after, {os.cpu_count()} cores")
    out = REPO / "benchmarks" / "results" / f"startup_vs_bare-{socket.gethostname()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
