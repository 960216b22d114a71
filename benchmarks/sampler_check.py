"""The device sampler on a real device (issue 26), for benchmarks/gpu_check.sh: does NVML (or the
CPU reader) see the device busy while it computes and idle while it waits, and what does sampling
every 0.5 s cost the computation?

    python benchmarks/sampler_check.py --device cuda --seconds 6 --out sampler_check.json

Three phases of `--seconds` each: matmuls with the sampler, a sleep with the sampler, matmuls
without it; prints and writes the busy and idle phases' summaries and the matmul rate with and
without sampling (their ratio: the sampler's cost, 1.00 is none)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from runner.training.sampler import Sampler, utilisation_summary  # noqa: E402


def matmuls(device: str, seconds: float) -> float:
    """Matmuls for `seconds`: how many per second."""
    n = 4096 if device == "cuda" else 256
    a = torch.randn(n, n, device=device)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for _ in range(10):
            a = torch.tanh(a @ a)
        if device == "cuda":
            torch.cuda.synchronize()
        done += 10
    return done / (time.perf_counter() - began)


def sampled(folder: Path, device: str, seconds: float, busy: bool) -> tuple[dict | None, float]:
    sampler = Sampler(folder / "utilisation.jsonl", every_s=0.5)
    sampler.on_start({"device": device})
    rate = matmuls(device, seconds) if busy else (time.sleep(seconds) or 0.0)
    sampler.close()
    return utilisation_summary(folder), rate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    matmuls(args.device, 1.0)  # warm-up: the first matmuls pay for kernels and threads
    with tempfile.TemporaryDirectory() as scratch:
        for phase in ("busy", "idle"):
            Path(scratch, phase).mkdir()
        busy, rate_sampled = sampled(Path(scratch, "busy"), args.device, args.seconds, busy=True)
        idle, _ = sampled(Path(scratch, "idle"), args.device, args.seconds, busy=False)
    rate_alone = matmuls(args.device, args.seconds)
    busy_util = (busy or {}).get("mean_util_percent")
    idle_util = (idle or {}).get("mean_util_percent")
    result = {"device": args.device, "busy": busy, "idle": idle, "matmuls_per_s_sampled": rate_sampled,
              "matmuls_per_s_alone": rate_alone, "sampled_over_alone": rate_sampled / rate_alone if rate_alone else None,
              "ok": busy_util is not None and idle_util is not None and busy_util > idle_util}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
