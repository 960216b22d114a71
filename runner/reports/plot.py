"""loss_curve.png: train and test loss per epoch, and on a second axis the test accuracy (the
default step) or the named values a user's train.step returns."""

from __future__ import annotations

import io
from pathlib import Path

from runner.runs.files import atomic_write


def plot_loss_curve(epochs: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    xs = [r["epoch"] for r in epochs]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(xs, [r["loss"] for r in epochs], "o-", label="train loss")
    ax.plot(xs, [r["test_loss"] for r in epochs], "s-", label="test loss")
    ax.set_xlabel("epoch")
    named = list((epochs[-1].get("metrics") or {}))
    ax.set_ylabel("loss" if named or epochs[-1].get("test_accuracy") is None else "cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    if epochs[-1].get("test_accuracy") is not None or named:
        other = ax.twinx()
        if named:
            for name, style in zip(named, ("^--", "v--", "d--", "x--", "*--")):
                other.plot(xs, [r["metrics"][name] for r in epochs], style, label=f"train {name}")
                other.plot(xs, [r["test_metrics"][name] for r in epochs], style[0] + ":", label=f"test {name}")
            other.set_ylabel(", ".join(named))
        else:
            other.plot(xs, [100 * r["test_accuracy"] for r in epochs], "^--", color="tab:green", label="test accuracy")
            other.set_ylabel("test accuracy (%)")
        more = other.get_legend_handles_labels()
        lines = (lines[0] + more[0], lines[1] + more[1])
    ax.legend(lines[0], lines[1], loc="center right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    atomic_write(path, image.getvalue())
