"""`gpujob sweep SPEC --dry-run`: each trial's estimate (time, and dollars where its backend rents),
the whole sweep's as trials x time x $, and a refusal (exit 2) when that is above sweep.max_usd.

Trials that differ only in what does not change a step's cost (a learning rate, a seed) share one
estimate: the dry run of a job is timed once per model, data, batch, precision and length."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runner.errors import bad_input
from runner.reports.estimate import human_duration
from runner.spec.model import JobSpec

PER_EPOCH = re.compile(r"~([\d,]+(?:\.\d+)?) s per epoch")


def _cost_key(spec: JobSpec) -> str:
    return repr((spec.model, spec.data, spec.optimizer.name, spec.train.precision, spec.train.epochs,
                 spec.train.max_steps, spec.train.compile, spec.resources, spec.backend))


def trial_estimate(spec: JobSpec, spec_path: Path, runs_dir: Path) -> tuple[str, float | None, float | None, str]:
    """(backend, seconds, dollars, a doubt) for one trial; None where it cannot be told."""
    from runner.backends.auto import choose_backend
    from runner.backends.registry import get_backend
    from runner.cli.dryrun import dry_run
    from runner.reports.estimate import before_run

    name, _why = choose_backend(spec)
    backend = get_backend(name)
    if backend.rents and spec.resources.gpu_request is not None:
        guess = before_run(spec, runs_dir)
        if guess is None:
            return name, None, None, ""
        return name, guess["total_s"] + guess.get("startup_s", 0), guess["total_usd"], ""
    plan = backend.plan(spec, spec_path, runs_dir, "dry-run")
    rows = dict(dry_run(plan))
    found = PER_EPOCH.search(rows.get("estimate", ""))
    seconds = float(found.group(1).replace(",", "")) * spec.train.epochs if found else None
    doubt = " (UNRELIABLE: this CPU is busy or its timed steps varied; see gpujob submit --dry-run)" if (
        "UNRELIABLE" in rows.get("estimate", "")) else ""
    return name, seconds, 0.0 if not backend.rents else None, doubt


def sweep_dry_run(specs: list[JobSpec], fields: list[str], planned: int, sampler: str, job: JobSpec, spec_path: Path,
                  runs_dir: Path, max_usd: float | None) -> list[str]:
    """The lines to print; exit 2 when the whole sweep's estimate is above max_usd."""
    known: dict[str, tuple[str, float | None, float | None, str]] = {}
    lines, total_s, total_usd = [], 0.0, 0.0
    sampled = not specs  # a random or TPE sweep: its trials are drawn as it runs; each costed as the spec
    for spec in specs or [job.model_copy(update={"sweep": None})] * planned:
        key = _cost_key(spec)
        if key not in known:
            known[key] = trial_estimate(spec, spec_path, runs_dir)
        backend, seconds, usd, doubt = known[key]
        total_s += seconds or 0.0
        total_usd += usd or 0.0
        if not sampled:
            lines.append(f"  {_label(spec, fields)}: {_time(seconds)} on {backend}{_money(usd)}{doubt}")
    each = f"{human_duration(total_s / planned)} each" if total_s else "time unknown"
    lines.append(f"sweep: {planned} trials ({sampler}) x {each} = {human_duration(total_s)}, "
                 f"{_usd(total_usd)}" + (f" (budget {_usd(max_usd)})" if max_usd else "")
                 + ("; sampled trials costed as the spec is written" if sampled else ""))
    if max_usd is not None and total_usd > max_usd:
        raise bad_input(f"sweep.max_usd: the sweep's estimate, {_usd(total_usd)} for {planned} trials, is above its "
                        f"budget of {_usd(max_usd)}; raise it, or sweep fewer trials")
    return lines


def _time(seconds: float | None) -> str:
    return human_duration(seconds) if seconds is not None else "time unknown"


def _money(usd: float | None) -> str:
    return f", {_usd(usd)}" if usd else ""


def _usd(usd: float) -> str:
    return f"${usd:.2f}" if usd >= 0.01 or usd == 0 else f"${usd:.4f}"


def _label(spec: JobSpec, fields: list[str]) -> str:
    """The trial's values of the swept fields, as `optimizer.lr=0.01 data.batch_size=32`."""
    values = []
    for field in fields:
        node: Any = spec.model_dump(mode="json")
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values.append(f"{field}={node}")
    return " ".join(values)
