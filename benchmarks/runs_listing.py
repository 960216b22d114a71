"""How fast `gpujob runs` lists a big runs folder: N run folders (copies of one real finished run,
each with its own record), listed by the real CLI in a subprocess, side by side with the same
listing in this process (without Python's and typer's start-up) and with `ls -l` of the folder.

    uv run python benchmarks/runs_listing.py            # 1000 runs
    uv run python benchmarks/runs_listing.py --runs 5000

Writes benchmarks/results/runs_listing-<hostname>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()

    from runner.runs.record import read, write
    from runner.cli.runs_table import collect

    with tempfile.TemporaryDirectory(prefix="gpujob-bench-") as scratch:
        runs_dir = Path(scratch) / "runs"
        made = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(REPO / "jobs" / "quickstart.yaml"),
                               "--set", "train.epochs=2", "--runs-dir", str(runs_dir)], cwd=REPO,
                              capture_output=True, text=True, check=True)
        original = Path(made.stdout.strip().splitlines()[-1])
        original = original if original.is_absolute() else REPO / original
        for index in range(1, args.runs):
            copy = runs_dir / f"{original.name}-{index:05d}"
            shutil.copytree(original, copy, ignore=shutil.ignore_patterns("checkpoints", "model.pt", "*.png"))
            record = read(copy)
            record.run = copy.name
            write(copy, record)
        listed = len(collect(runs_dir))
        assert listed == args.runs, f"listed {listed} of {args.runs}"

        cli = best_of(3, lambda: subprocess.run([sys.executable, "-m", "runner.cli", "runs", "--runs-dir",
                                                 str(runs_dir)], capture_output=True, check=True))
        in_process = best_of(3, lambda: collect(runs_dir))
        help_only = best_of(3, lambda: subprocess.run([sys.executable, "-m", "runner.cli", "--help"],
                                                      capture_output=True, check=True))
        ls = best_of(3, lambda: subprocess.run(["ls", "-l", str(runs_dir)], capture_output=True, check=True))

    result = {"runs": args.runs, "gpujob_runs_s": round(cli, 3), "collect_in_process_s": round(in_process, 3),
              "gpujob_help_s": round(help_only, 3), "ls_l_s": round(ls, 4),
              "per_run_ms": round(1000 * in_process / args.runs, 3)}
    print(f"{args.runs} runs: `gpujob runs` {cli:.2f} s (of which Python + CLI start-up, as `gpujob --help`: "
          f"{help_only:.2f} s); the listing itself {in_process:.3f} s = {result['per_run_ms']:.2f} ms per run; "
          f"`ls -l` {ls * 1000:.1f} ms")
    out = REPO / "benchmarks" / "results" / f"runs_listing-{socket.gethostname()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
