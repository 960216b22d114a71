"""Kill -9 a training run at random moments and resume it, many times over.

Run as `python -m tests.kill_resume_driver SPEC OUT TRIES SEED [MID_WRITE]`. torch and the
runner are imported once here, then every run is a fork() of this process, so a try costs
milliseconds of start-up rather than seconds. This process itself runs no torch ops
(forking after OpenMP threads exist is unsafe). Prints one JSON report on stdout.

TRIES runs are killed at random moments: after a random number of the reference run's metric
records have appeared (so a kill lands during training however long set-up took), plus a random
fraction of one record's interval. MID_WRITE more are killed while a checkpoint is being
written, on purpose: their disk is slow (the child pauses in the middle of each checkpoint's
write), and they are killed as soon as the half-written temp file appears.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import matplotlib
import sklearn.datasets  # noqa: F401  (imported before forking, like torch)
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (every optimizer imports it: seconds, paid once here)
import torch.utils.flop_counter  # noqa: F401  (the summary's FLOP count: likewise)

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401

from runner.spec.load import load_spec
from runner.launching.worker import run_worker


SLOW_WRITE_S = 0.3


def _slow_checkpoint_writes() -> None:
    """In a child: every checkpoint is written half, then a pause, then the rest (a slow disk)."""
    from runner.runs import files as run_folder

    real = run_folder.atomic_write_chunks

    def halting(path, chunks):
        if path.parent.name != "checkpoints":
            return real(path, chunks)

        def paused():
            for chunk in chunks:
                yield chunk[: len(chunk) // 2]
                time.sleep(SLOW_WRITE_S)
                yield chunk[len(chunk) // 2:]
        return real(path, paused())

    run_folder.atomic_write_chunks = halting


def _fork_run(spec, run_dir: Path, resume: bool, slow_disk: bool = False) -> int:
    pid = os.fork()
    if pid == 0:  # the child: train, then leave without running the parent's cleanup
        code = 0
        try:
            if slow_disk:
                _slow_checkpoint_writes()
            run_worker(spec, run_dir=run_dir, quiet=True, resume=resume)
        except BaseException as err:  # noqa: BLE001 - report any failure as an exit code
            _error_file(run_dir).write_text(repr(err))  # for the report: the test shows it
            code = 1
        os._exit(code)
    return pid


def _error_file(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}.error")


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _kill_mid_write(pid: int, run_dir: Path, limit_s: float) -> None:
    """Kill the child as soon as a checkpoint's temp file appears (its write paused half way)."""
    deadline = time.monotonic() + limit_s
    folder = run_dir / "checkpoints"
    while time.monotonic() < deadline:
        if folder.is_dir() and any(folder.glob(".step-*.tmp")):
            break
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)


def _records(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def _kill_after_records(pid: int, run_dir: Path, records: int, extra_s: float, limit_s: float) -> None:
    """Kill the child once `records` metric lines are on disk, `extra_s` later."""
    deadline = time.monotonic() + limit_s
    while _records(run_dir) < records and time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            raise SystemExit(f"{run_dir.name} ended before it was killed")
        time.sleep(0.002)
    time.sleep(extra_s)
    os.kill(pid, signal.SIGKILL)


def main(spec_path: str, out: str, tries: int, seed: int, mid_write: int = 0) -> None:
    spec = load_spec(spec_path)
    out_dir = Path(out)
    rng = random.Random(seed)
    start = time.monotonic()
    assert _wait(_fork_run(spec, out_dir / "reference", resume=False)) == 0, "reference run failed"
    duration = time.monotonic() - start
    total = _records(out_dir / "reference")
    interval = duration / max(total, 1)
    report = {"reference_s": duration, "records": total, "tries": []}
    for attempt in range(tries + mid_write):
        run_dir = out_dir / f"try-{attempt:02d}"
        targeted = attempt >= tries
        pid = _fork_run(spec, run_dir, resume=False, slow_disk=targeted)
        delay = 0.0
        if targeted:
            _kill_mid_write(pid, run_dir, limit_s=duration * 10 + 30)
        else:
            after = rng.randrange(0, max(total - 1, 1))
            delay = rng.uniform(0, 0.5) * interval  # interval includes the cold set-up: overstated
            _kill_after_records(pid, run_dir, after, delay, limit_s=duration * 10 + 30)
        killed = _wait(pid) == -signal.SIGKILL
        leftovers = [p.name for p in (run_dir / "checkpoints").glob(".step-*.tmp")] if killed else []
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
        code = _wait(_fork_run(spec, run_dir, resume=True))
        report["tries"].append({"dir": run_dir.name, "delay_s": round(delay, 3), "killed": killed,
                                "targeted": targeted,
                                "mid_write": bool(leftovers), "checkpoints_at_kill": checkpoints[-1:],
                                "resume_exit": code,
                                "error": _error_file(run_dir).read_text() if code else None})
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
