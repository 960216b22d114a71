"""What `gpujob watch` shows of a run, read from its folder as the job writes it: epoch and step
progress with an estimate of the time left, the latest loss and test metrics, samples/s, the
device's utilisation, and for a rented GPU the cost so far and to the end (the catalog's list
price: an estimate, not the bill). A backend whose folder is not here (Modal, vast.ai) shows its
state and its output's latest progress line instead; the metrics come back with `gpujob fetch`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from runner.runs.paths import METRICS
from runner.runs.reading import metrics_records
from runner.spec.model import JobSpec

UTILISATION = "utilisation.jsonl"  # runner/training/sampler.py writes it


@dataclass
class Progress:
    epochs: int
    epoch: int = 0  # epochs done
    step: int = 0
    total_steps: int | None = None  # known once the first epoch has ended (or from train.max_steps)
    last_step: dict = field(default_factory=dict)
    last_epoch: dict = field(default_factory=dict)
    utilisation: dict | None = None
    eta_s: float | None = None
    cost_so_far_usd: float | None = None
    cost_to_end_usd: float | None = None


def read_progress(folder: Path, spec: JobSpec, backend: str, submitted_at: str | None,
                  now: float | None = None) -> Progress:
    now = time.time() if now is None else now
    records = metrics_records(folder / METRICS)
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    p = Progress(epochs=spec.train.epochs, last_step=steps[-1] if steps else {},
                 last_epoch=epochs[-1] if epochs else {})
    p.epoch = p.last_epoch.get("epoch", 0)
    p.step = max(p.last_step.get("step", 0), p.last_epoch.get("step", 0))
    p.total_steps = _total_steps(spec, epochs)
    samples = metrics_records(folder / UTILISATION)
    p.utilisation = samples[-1] if samples else None
    rate = p.last_step.get("samples_per_s") or p.last_epoch.get("samples_per_s")
    if p.total_steps and rate:
        p.eta_s = max(0, p.total_steps - p.step) * spec.data.batch_size / rate
    price = _price_per_hour(spec, backend)
    started = _epoch_seconds(submitted_at)
    if price is not None and started is not None:
        p.cost_so_far_usd = price * max(0.0, now - started) / 3600
        if p.eta_s is not None:
            p.cost_to_end_usd = p.cost_so_far_usd + price * p.eta_s / 3600
    return p


def _total_steps(spec: JobSpec, epochs: list[dict]) -> int | None:
    """Steps per epoch from the first epoch that ended whole (step = epoch x steps per epoch)."""
    cap = spec.train.max_steps
    whole = [r for r in epochs if r.get("epoch") and r["step"] % r["epoch"] == 0 and (cap is None or r["step"] < cap)]
    per_epoch = whole[0]["step"] // whole[0]["epoch"] if whole else None
    total = per_epoch * spec.train.epochs if per_epoch else None
    if cap is not None:
        return min(cap, total) if total else cap
    return total


def _price_per_hour(spec: JobSpec, backend: str) -> float | None:
    request = spec.resources.gpu_request
    price = request.type.price_per_hour.get(backend) if request else None
    return price * request.count if request and price else None


def _epoch_seconds(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def panel(run_name: str, backend: str, state_line: str, p: Progress | None, latest_line: str | None = None):
    """The rich renderable: a table of what is known, with progress bars."""
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("state", state_line)
    if p is not None:
        grid.add_row(f"epoch {p.epoch}/{p.epochs}", ProgressBar(total=p.epochs, completed=p.epoch, width=40))
        total = p.total_steps
        grid.add_row(f"step {p.step}/{total or '?'}", ProgressBar(total=total or 1, completed=p.step if total else 0,
                                                                   width=40))
        if p.eta_s is not None and total and p.step < total:
            grid.add_row("time left", f"about {_duration(p.eta_s)}")
        for key, value in _latest(p).items():
            grid.add_row(key, value)
        if p.utilisation:
            grid.add_row("device", _utilisation_line(p.utilisation))
        if p.cost_so_far_usd is not None:
            end = f", about ${p.cost_to_end_usd:.2f} to the end" if p.cost_to_end_usd is not None else ""
            grid.add_row("cost", f"${p.cost_so_far_usd:.2f} so far{end} (list price x time, not the bill)")
    if latest_line:
        grid.add_row("latest", latest_line)
    return Panel(grid, title=f"{run_name} ({backend})", expand=False)


def _latest(p: Progress) -> dict[str, str]:
    rows = {}
    if p.last_step:
        s = p.last_step
        rows["loss"] = f"{s['loss']:.4f} at step {s['step']}" + (f", lr {s['lr']:.3g}" if s.get("lr") is not None else "")
    e = p.last_epoch
    tests = {k: v for k, v in e.items() if k in ("test_loss", "test_accuracy") and v is not None}
    tests.update({f"test {k}": v for k, v in (e.get("test_metrics") or {}).items()})
    if tests:
        rows[f"test (epoch {e['epoch']})"] = "  ".join(
            f"{k} {v:.2%}" if k == "test_accuracy" else f"{k} {v:.4g}" for k, v in tests.items())
    rate = p.last_step.get("samples_per_s") or e.get("samples_per_s")
    if rate:
        rows["samples/s"] = f"{rate:,.0f}"
    return rows


def _utilisation_line(sample: dict) -> str:
    parts = [f"{sample.get('device', '?')} busy {sample['util_percent']:.0f}%" if sample.get("util_percent") is not None
             else str(sample.get("device", "?"))]
    if sample.get("memory_used_bytes"):
        parts.append(f"{sample['memory_used_bytes'] / 2**30:.1f} GiB")
    if sample.get("power_w") is not None:
        parts.append(f"{sample['power_w']:.0f} W")
    if sample.get("temperature_c") is not None:
        parts.append(f"{sample['temperature_c']} C")
    if sample.get("throttle"):
        parts.append("throttled: " + ", ".join(sample["throttle"]))
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
