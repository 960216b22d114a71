"""Watching runs: `gpujob tensorboard` over runs' event files (RUN/tensorboard/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from runner.cli.app import app, user_errors
from runner.errors import bad_input, missing_backend
from runner.runs.paths import RECORD
from runner.training.tensorboard_events import TENSORBOARD_DIR


@app.command()
@user_errors
def tensorboard(
    paths: Optional[List[Path]] = typer.Argument(None, metavar="[RUNS_DIR or RUN...]",
                                                 help="run folders, or folders of runs (default: runs)"),
    port: int = typer.Option(6006, "--port", metavar="PORT", help="where TensorBoard serves"),
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", help="the address it listens on (0.0.0.0: "
                             "every interface)"),
):
    """Start TensorBoard over the runs' event files (each run writes RUN/tensorboard/)."""
    try:
        import tensorboard as _  # noqa: F401
    except ImportError:
        raise missing_backend("TensorBoard is not installed here: uv sync --extra tensorboard (or pip install "
                              "tensorboard), then run this again") from None
    logdir = _logdir_arguments(paths or [Path("runs")])
    typer.echo(f"gpujob: TensorBoard on http://{host}:{port}/ ; Ctrl-C stops it", err=True)
    code = subprocess.run([sys.executable, "-m", "tensorboard.main", *logdir, "--port", str(port),
                           "--host", host]).returncode
    raise typer.Exit(code)


def _logdir_arguments(paths: list[Path]) -> list[str]:
    """--logdir for one folder of runs (TensorBoard finds each run's events below it); otherwise
    --logdir_spec with each run, or folder of runs, under its own name."""
    named = []
    for path in paths:
        if not path.is_dir():
            raise bad_input(f"{path}: no such folder (give run folders, or a folder of runs)")
        if (path / RECORD).is_file() or (path / TENSORBOARD_DIR).is_dir():
            if not (path / TENSORBOARD_DIR).is_dir():
                raise bad_input(f"{path}: this run wrote no TensorBoard events (the tensorboard package was not "
                                "installed where it ran)")
            named.append((path.resolve().name, path / TENSORBOARD_DIR))
        else:
            named.append((path.resolve().name, path))
    if len(named) == 1 and named[0][1] == paths[0]:
        return ["--logdir", str(paths[0])]
    return ["--logdir_spec", ",".join(f"{name}:{folder}" for name, folder in named)]
