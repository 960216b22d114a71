"""What a finished training returns: the summary (summary.json) and the timing (timing.json),
both from this attempt's own clock, with every earlier attempt's figures listed beside it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from runner.training.goal import target_summary
from runner.training.loopstate import LoopState
from runner.training.meter import from_env, spent_before
from runner.training.setup import device_name


@dataclass
class TrainResult:
    summary: dict
    timing: dict
    epochs: list[dict] = field(default_factory=list)  # the per-epoch metric records
    weights: dict | None = None  # the final model state (rank 0), for model.pt


@dataclass
class Measured:
    """What the loop knows of itself at the end, beside its state."""

    device: object
    world_size: int
    parameters: int
    flops_per_sample: float | None
    compile_s: float | None
    data_held_on: str  # "device", "pinned host memory", or a DataLoader's workers


def attempt_timing(started: float, time_to_first_step_s: float | None, phases: dict) -> dict:
    """An attempt's start-up and length so far, from its own clock (`started`: perf_counter)."""
    import time

    total_s = time.perf_counter() - started
    meter = from_env()
    billing = {"billing": meter.billing()} if meter else {}  # what a priced attempt had cost by now
    return {"started_at": time.time() - total_s, "time_to_first_step_s": time_to_first_step_s,
            "total_s": total_s, "phases": dict(phases), **billing}


def summary_of(spec, s: LoopState, m: Measured, this_attempt: dict) -> dict:
    from runner.training.flops import peak_tflops

    last = s.epoch_records[-1]
    samples_per_s = s.step * spec.data.batch_size / max(s.train_loop_s, 1e-9)
    achieved = m.flops_per_sample * samples_per_s / 1e12 if m.flops_per_sample else None
    peak = peak_tflops(m.device, spec.train.precision)
    summary = {
        "name": spec.name, "model": spec.model.name, "dataset": spec.data.dataset,
        "train_loss": last["loss"], "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
        "epochs": len(s.epoch_records), "steps": s.step, "wall_s": this_attempt["total_s"],
        "samples_per_s": samples_per_s, "per_worker_samples_per_s": samples_per_s / m.world_size,
        "device": str(m.device), "device_name": device_name(m.device), "world_size": m.world_size,
        "precision": spec.train.precision, "parameters": m.parameters, "global_batch_size": spec.data.batch_size,
        "local_batch_size": spec.data.batch_size // m.world_size, "resumed": s.resumed,
        "flops_per_sample": m.flops_per_sample, "achieved_tflops": achieved, "peak_tflops_per_device": peak,
        "mfu": achieved / (peak * m.world_size) if achieved is not None and peak else None,
        "peak_memory_bytes": peak_memory_bytes(m.device), "data_held_on": m.data_held_on,
    }
    if "metrics" in last:  # a user step's named values, as the last epoch averaged them
        summary["metrics"], summary["test_metrics"] = last["metrics"], last["test_metrics"]
    summary["whole_wall_s"] = sum(a["total_s"] for a in [*s.attempts, this_attempt])
    summary["stopped_by"] = s.stopped_by or ("epochs" if last["epoch"] >= spec.train.epochs else "max_steps")
    meter = from_env()
    summary["usd"] = spent_before(s.attempts, meter) + meter.submission_usd() if meter else None
    summary.update(target_summary(spec, s.stopped_by, s.epoch_records, summary["whole_wall_s"], summary["usd"]))
    return summary


def timing_of(s: LoopState, m: Measured, this_attempt: dict) -> dict:
    """The top-level figures are this attempt's, each consistent with the others; `attempts`
    lists every attempt's own, and whole_s adds them up (earlier ones to their last checkpoint)."""
    attempts = [*s.attempts, this_attempt]
    return {"time_to_first_step_s": this_attempt["time_to_first_step_s"], "total_s": this_attempt["total_s"],
            "train_loop_s": s.train_loop_s, "compile_s": m.compile_s,
            "train_loop_without_compile_s": s.train_loop_s - (m.compile_s or 0.0),
            "started_at": this_attempt["started_at"], "phases": this_attempt["phases"],
            "epochs": s.epoch_timing, "interruptions": s.interruptions,
            "attempts": attempts, "whole_s": sum(a["total_s"] for a in attempts)}


def peak_memory_bytes(device) -> int | None:
    """The most memory the job held: CUDA's allocator peak, or this process's peak RSS."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:  # Linux: this process's own high-water mark (ru_maxrss may carry a parent's across exec)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS says bytes, Linux KiB
    except (ImportError, OSError):
        return None
