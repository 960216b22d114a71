"""loss_curve.png: train and test loss per epoch, test accuracy on a second axis."""

from __future__ import annotations

import io
from pathlib import Path

from runner.run_folder import atomic_write


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
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    acc = ax.twinx()
    acc.plot(xs, [100 * r["test_accuracy"] for r in epochs], "^--", color="tab:green", label="test accuracy")
    acc.set_ylabel("test accuracy (%)")
    lines = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    atomic_write(path, image.getvalue())
