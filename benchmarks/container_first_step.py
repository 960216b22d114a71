"""Time to first step of the same small digits job on this machine and in gpujob's image: what a
container pays before it trains (start-up, imports, bytecode) against the host's own venv.

    uv run gpujob image build --tag gpujob:latest          # once (see the README's Docker section)
    uv run python benchmarks/container_first_step.py       # image gpujob:latest, 3 timed runs each
    uv run python benchmarks/container_first_step.py --image gpujob:test --repeats 5

Both sides run `gpujob run` on jobs/quickstart.yaml with `--set train.epochs=2`: on the host the
venv's console script, in the container the image's entrypoint (as `--backend docker` starts it:
your uid:gid, the runs folder mounted, `--ipc=host`). Time to first step is the run folder's
`timing.json` (from the start of `gpujob run`, imports included); wall time is the whole command,
container start and stop included. One untimed run on each side first, so both read their files
from a warm page cache; then the runs alternate, and the medians (and best runs) are compared.

Writes benchmarks/results/container_first_step-<hostname>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "quickstart.yaml"
OVERRIDES = ["--set", "train.epochs=2"]


def host_command(spec: Path, run_dir: Path) -> list[str]:
    gpujob = Path(sys.executable).with_name("gpujob")  # the venv's console script, as a user types it
    return [str(gpujob), "run", str(spec), "--run-dir", str(run_dir), *OVERRIDES]


def container_command(image: str, job_dir: Path, runs_dir: Path, name: str) -> list[str]:
    return ["docker", "run", "--rm", "--init", "--ipc=host", "--user", f"{os.getuid()}:{os.getgid()}",
            "--env", "HOME=/tmp", "--volume", f"{runs_dir}:/runs:rw", "--volume", f"{job_dir}:/job:ro",
            image, f"/job/{JOB.name}", "--run-dir", f"/runs/{name}", *OVERRIDES]


def timed_run(command: list[str], run_dir: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"container_first_step: {' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    timing = json.loads((run_dir / "timing.json").read_text())
    return {"time_to_first_step_s": round(timing["time_to_first_step_s"], 3), "wall_s": round(wall_s, 3)}


def image_facts(image: str) -> dict:
    inspected = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}} {{.Size}}", image],
                               capture_output=True, text=True)
    if inspected.returncode != 0:
        sys.exit(f"container_first_step: no image {image} here; build it with: uv run gpujob image build --tag {image}")
    image_id, size = inspected.stdout.split()
    count = ("find /opt/gpujob -name '*.py' | wc -l; find /opt/gpujob -name '*.pyc' | wc -l")
    counted = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", count],
                             capture_output=True, text=True, check=True).stdout.split()
    return {"image": image, "image_id": image_id, "image_size_bytes": int(size),
            "py_files": int(counted[0]), "pyc_files": int(counted[1])}


def summary_of(runs: list[dict], key: str) -> dict:
    # The median is the typical run; the best one is what is left when nothing else on a busy
    # machine gets in the way.
    values = [run[key] for run in runs]
    return {"median": round(statistics.median(values), 2), "best": round(min(values), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="gpujob:latest")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("docker") is None:
        sys.exit("container_first_step: needs the docker command and an engine")
    facts = image_facts(args.image)

    runs = {"host": [], "container": []}
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-") as scratch:
        job_dir, runs_dir = Path(scratch) / "job", Path(scratch) / "runs"
        job_dir.mkdir()
        runs_dir.mkdir()
        shutil.copy(JOB, job_dir / JOB.name)
        for index in range(args.repeats + 1):  # run 0 warms the page cache on both sides and is left out
            host_dir = runs_dir / f"host-{index}"
            host = timed_run(host_command(job_dir / JOB.name, host_dir), host_dir)
            container = timed_run(container_command(args.image, job_dir, runs_dir, f"container-{index}"),
                                  runs_dir / f"container-{index}")
            if index:
                runs["host"].append(host)
                runs["container"].append(container)

    result = {**facts, "job": f"{JOB.relative_to(REPO)} {' '.join(OVERRIDES)}", "repeats": args.repeats,
              "host_pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""), "runs": runs}
    for key in ("time_to_first_step_s", "wall_s"):
        host, container = summary_of(runs["host"], key), summary_of(runs["container"], key)
        ratio = {stat: round(container[stat] / host[stat], 2) for stat in ("median", "best")}
        result[key] = {"host": host, "container": container, "container_over_host": ratio}
        print(f"{key:22} host {host['median']:6.2f} s   container {container['median']:6.2f} s   container / host "
              f"{ratio['median']:.2f}x   (median of {args.repeats}; best: {host['best']:.2f} s, "
              f"{container['best']:.2f} s, {ratio['best']:.2f}x)")
    print(f"image {args.image}: {facts['image_size_bytes'] / 1e9:.2f} GB, {facts['pyc_files']} .pyc files for "
          f"{facts['py_files']} .py files under /opt/gpujob")
    out = REPO / "benchmarks" / "results" / f"container_first_step-{socket.gethostname()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
