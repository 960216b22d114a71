"""A sweep's answer, from sweep.json and its trials' folders alone: a table of the trials sorted by the
metric (table.txt), the best trial's spec ready to submit (best.yaml), and sweep.png: the metric
against each axis, and every trial's metric per epoch (pruned trials marked where they stopped)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from runner.invocation import command
from runner.runs.files import atomic_write
from runner.runs.paths import RunPaths
from runner.sweeps import record as rec
from runner.sweeps.axes import Axis
from runner.sweeps.record import FINISHED, PRUNED, SweepRecord, TrialRecord


def ranked(sweep: SweepRecord) -> list[TrialRecord]:
    """Trials with a result, best first (finished ones before pruned ones at equal footing is not
    asked: the metric decides); those without one after, in their order."""
    sign = 1 if sweep.goal == "min" else -1
    scored = sorted((t for t in sweep.trials if t.value is not None), key=lambda t: (sign * t.value, t.number))
    return scored + [t for t in sweep.trials if t.value is None]


def best_trial(sweep: SweepRecord) -> TrialRecord | None:
    """The best trial that ran to its end (a pruned trial's metric is from fewer epochs)."""
    return next((t for t in ranked(sweep) if t.state == FINISHED and t.value is not None), None)


def table(sweep: SweepRecord) -> list[str]:
    fields = [Axis.from_json(a).field for a in sweep.axes]
    header = ["#", "trial", *fields, sweep.metric, "state", "epochs", "wall s"]
    rows = [[str(i + 1) if t.value is not None else "-", t.folder, *(_cell(t.params.get(f)) for f in fields),
             f"{t.value:.4f}" if t.value is not None else "-", t.state, str(t.epochs if t.epochs is not None else "-"),
             f"{t.wall_s:.1f}" if t.wall_s is not None else "-"] for i, t in enumerate(ranked(sweep))]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_lines(folder: Path, sweep: SweepRecord) -> list[str]:
    done = sum(t.state in rec.ENDED for t in sweep.trials)
    pruned = sum(t.state == PRUNED for t in sweep.trials)
    lines = [f"sweep {folder.name}: {sweep.state}, {done} of {sweep.planned} trials ended ({pruned} pruned), "
             f"{sweep.sampler} sampler, {sweep.metric} ({sweep.goal})", *table(sweep)]
    best = best_trial(sweep)
    if best is not None:
        values = " ".join(f"{k}={_cell(v)}" for k, v in best.params.items())
        lines.append(f"best: {best.folder} {values}: {sweep.metric} {best.value:.4f}; its spec: {folder / rec.BEST}")
    return lines


def write_report(folder: Path) -> SweepRecord:
    """table.txt, best.yaml (where a trial finished) and sweep.png, each written atomically."""
    sweep = rec.read(folder)
    atomic_write(folder / rec.TABLE, ("\n".join(summary_lines(folder, sweep)) + "\n").encode())
    best = best_trial(sweep)
    if best is not None:
        spec = RunPaths(folder / best.folder).job_spec.read_text()
        head = (f"# The best trial of sweep {folder.name}: {best.folder}, {sweep.metric} {best.value:.6g} "
                f"({sweep.goal}).\n# Submit it as it is: {command(f'gpujob submit {folder / rec.BEST}')}\n")
        atomic_write(folder / rec.BEST, (head + spec).encode())
    if sweep.trials:
        plot(sweep, folder / rec.PLOT)
    return sweep


def plot(sweep: SweepRecord, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    axes = [Axis.from_json(a) for a in sweep.axes]
    fig, panels = plt.subplots(1, len(axes) + 1, figsize=(4.2 * (len(axes) + 1), 4), dpi=100, squeeze=False)
    for panel, axis in zip(panels[0], axes):
        _metric_against(panel, axis, sweep)
    _curves(panels[0][-1], sweep)
    fig.suptitle(f"sweep {sweep.name}: {sweep.metric} ({sweep.goal}), {len(sweep.trials)} trials")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def _metric_against(panel, axis: Axis, sweep: SweepRecord) -> None:
    choices = None if axis.is_range or all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in axis.values) else [str(v) for v in axis.values]
    for trial in sweep.trials:
        if trial.value is None:
            continue
        x = trial.params.get(axis.field)
        x = choices.index(str(x)) if choices else x
        pruned = trial.state == PRUNED
        panel.scatter([x], [trial.value], marker="x" if pruned else "o", color="tab:red" if pruned else "tab:blue")
    if choices:
        panel.set_xticks(range(len(choices)), choices)
    elif axis.scale == "log" or _spans_decades(axis):
        panel.set_xscale("log")
    panel.set_xlabel(axis.field)
    panel.set_ylabel(sweep.metric)
    panel.grid(alpha=0.3)


def _spans_decades(axis: Axis) -> bool:
    numbers = [v for v in axis.values if isinstance(v, (int, float)) and v > 0]
    return len(numbers) > 1 and max(numbers) / min(numbers) >= 10


def _curves(panel, sweep: SweepRecord) -> None:
    from matplotlib.ticker import MaxNLocator

    for trial in sweep.trials:
        points = [(i + 1, v) for i, v in enumerate(trial.curve) if v is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        pruned = trial.state == PRUNED
        line, = panel.plot(xs, ys, "--" if pruned else "-", alpha=0.8, label=trial.folder)
        if pruned:
            panel.plot([xs[-1]], [ys[-1]], "x", color=line.get_color(), markersize=9)
    panel.set_xlabel("epoch")
    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    panel.set_ylabel(sweep.metric)
    panel.set_title("trials (dashed, x: pruned)", fontsize=9)
    panel.grid(alpha=0.3)
    if 0 < len(panel.get_lines()) and len(sweep.trials) <= 12:
        panel.legend(fontsize=7)
