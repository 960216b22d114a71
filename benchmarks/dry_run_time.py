"""How long `gpujob submit JOB --dry-run` takes for every job in jobs/, the whole command as a user
runs it (Python start-up and torch's import included), best of N, on this machine.

    uv run python benchmarks/dry_run_time.py            # best of 3
    uv run python benchmarks/dry_run_time.py --repeats 5

Writes benchmarks/results/dry_run_time-<hostname>.json. The aim: under 10 s for each on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-") as scratch:
        for job in sorted((REPO / "jobs").glob("*.yaml")):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(job), "--dry-run",
                                      "--runs-dir", str(Path(scratch) / "runs")], cwd=REPO, capture_output=True,
                                     text=True)
                times.append(time.perf_counter() - started)
                assert out.returncode == 0, out.stderr
            backend = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("backend"))
            results[job.name] = {"best_s": round(min(times), 2), "all_s": [round(t, 2) for t in times],
                                 "backend": backend}
            print(f"{job.name:<20} {backend:<6} best {min(times):5.2f} s  (all: {', '.join(f'{t:.2f}' for t in times)})")
    out_file = REPO / "benchmarks" / "results" / f"dry_run_time-{socket.gethostname()}.json"
    out_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
