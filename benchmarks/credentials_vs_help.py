"""How long a user without a Modal token waits for "no credentials; run `modal token new`" from
`gpujob submit jobs/resnet18.yaml --gpu A10G:2`, against `gpujob --help` on the same machine
(issue 29: it came 83 s late on a busy machine, after the estimate's timed ResNet-18 steps).
Both are whole commands as a user runs them (Python's start-up included), run alternately,
median of N each; the answer should cost about what --help costs.

    uv run python benchmarks/credentials_vs_help.py            # 5 runs each
    uv run python benchmarks/credentials_vs_help.py --repeats 9

Writes benchmarks/results/credentials_vs_help-<hostname>.json.
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
NO_CREDENTIALS = "no credentials; run `modal token new`"


def timed(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=env, capture_output=True,
                         text=True)
    return time.perf_counter() - started, out


def without_modal_token(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(home), MODAL_CONFIG_PATH=str(home / ".modal.toml"))
    return env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"help": [], "no_credentials": []}
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-") as scratch:
        env = without_modal_token(Path(scratch))
        submit = ["submit", "jobs/resnet18.yaml", "--gpu", "A10G:2", "--runs-dir", str(Path(scratch) / "runs")]
        for _ in range(args.repeats):  # alternately, so a change in the machine's load hits both alike
            took, out = timed(["--help"], env)
            assert out.returncode == 0, out.stderr
            times["help"].append(took)
            took, out = timed(submit, env)
            assert out.returncode == 3 and NO_CREDENTIALS in out.stderr, (out.returncode, out.stderr)
            times["no_credentials"].append(took)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["no_credentials"] / medians["help"]
    load = os.getloadavg()[0]
    print(f"gpujob --help:                 median {medians['help']:.2f} s of {args.repeats}")
    print(f"no Modal token, submit --gpu:  median {medians['no_credentials']:.2f} s of {args.repeats}")
    print(f"ratio: {ratio:.2f}x   (load average {load:.1f}, {os.cpu_count()} CPUs)")
    result = {"repeats": args.repeats, "median_s": {k: round(v, 3) for k, v in medians.items()},
              "all_s": {k: [round(t, 3) for t in v] for k, v in times.items()}, "ratio": round(ratio, 2),
              "load_average_1min": round(load, 2), "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                                  time.gmtime())}
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"credentials_vs_help-{socket.gethostname()}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
