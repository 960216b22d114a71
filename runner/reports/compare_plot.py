"""compare.png: the runs of a `gpujob compare` in four panels: test loss against wall time (the
question people time by hand) and against epoch, throughput, and where each run's epoch time
went as stacked bars."""

from __future__ import annotations

import io
from pathlib import Path

from runner.runs.files import atomic_write
from runner.runs.view import RunView

PARTS = (("data", "tab:red"), ("compute", "tab:blue"), ("eval", "tab:gray"))


def wall_clock_curve(run: RunView) -> tuple[list[float], list[float]]:
    """(seconds since the process started, test loss) at each epoch's end: training begins once
    the model is built, then each epoch adds its training and evaluation time."""
    at = (run.timing.get("phases") or {}).get("model_built_s") or 0.0
    spent = {e["epoch"]: e.get("wall_s", 0.0) + e.get("eval_s", 0.0) for e in run.timing.get("epochs") or []}
    xs, ys = [], []
    for record in run.epochs:
        at += spent.get(record["epoch"], record.get("wall_s", 0.0))
        xs.append(at)
        ys.append(record["test_loss"])
    return xs, ys


def plot_comparison(runs: list[RunView], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((by_time, by_epoch), (speed, parts)) = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    labels = [f"{row['run']}\n{row['gpu']}" for row in rows]
    for run, row in zip(runs, rows):
        label = f"{row['run']} ({row['gpu']})"
        xs, ys = wall_clock_curve(run)
        by_time.plot(xs, ys, "o-", label=label)
        by_epoch.plot([r["epoch"] for r in run.epochs], [r["test_loss"] for r in run.epochs], "o-", label=label)
    by_time.set(xlabel="wall time since the job's process started (s)", ylabel="test loss",
                title="test loss against wall time")
    by_epoch.set(xlabel="epoch", ylabel="test loss", title="test loss against epoch")
    for ax in (by_time, by_epoch):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    positions = range(len(rows))
    speed.bar(positions, [row["samples_per_s"] or 0 for row in rows], color="tab:green")
    speed.set(ylabel="samples/s", title="training throughput")
    bottoms = [0.0] * len(rows)
    for part, colour in PARTS:
        heights = [100 * (row["shares"] or {}).get(part, 0.0) for row in rows]
        parts.bar(positions, heights, bottom=bottoms, color=colour, label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    parts.set(ylabel="% of epoch time", title="where the epoch time went", ylim=(0, 100))
    parts.legend(fontsize=8)
    for ax in (speed, parts):
        ax.set_xticks(list(positions), labels, fontsize=7)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    atomic_write(path, image.getvalue())
