"""Watching runs: `gpujob watch RUN`, a live panel until the run ends, and `gpujob tensorboard`
over runs' event files (RUN/tensorboard/)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from runner.cli.app import RunArg, RunsDirOpt, app, user_errors
from runner.errors import bad_input, missing_backend
from runner.runs.paths import METRICS, RECORD
from runner.training.tensorboard_events import TENSORBOARD_DIR

if TYPE_CHECKING:
    from runner.backends.base import Backend
    from runner.runs.state import Run


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


ENDED_CODES = {"finished": 0, "failed": 1, "cancelled": 130, "preempted": 143}  # where the backend gave none


@app.command()
@user_errors
def watch(run: str = RunArg, runs_dir: Path = RunsDirOpt,
          every: float = typer.Option(1.0, "--every", metavar="S", help="seconds between refreshes")):
    """Follow a run in a live panel until it ends; exit with the run's exit code.

    Epoch and step progress with the time left, the latest loss and test metrics, samples/s, the
    device's utilisation, and for rented GPUs the cost so far and to the end."""
    from rich.console import Console
    from rich.live import Live

    from runner.backends.registry import get_backend
    from runner.cli.lifecycle import find_run

    if not every > 0:
        raise bad_input(f"--every: expected a positive number of seconds, got {every}")
    found = find_run(run, runs_dir)
    backend = get_backend(found.record.backend)
    view, console = _Watched(found, backend), Console()
    with Live(view.render(), console=console, refresh_per_second=4, auto_refresh=False) as live:
        while view.state.live:
            time.sleep(every)
            view.refresh()
            live.update(view.render(), refresh=True)
    if not console.is_terminal:  # off a terminal Live prints its last panel alone, without ending the line
        typer.echo("")
    state = view.state
    code = state.exit_code if state.exit_code is not None else ENDED_CODES.get(state.state, 1)
    typer.echo(f"{found.folder.name}: {state.describe()}")
    raise typer.Exit(code)


class _Watched:
    """A run as watch shows it: its state (asked of the backend every few seconds) and progress."""

    STATE_EVERY_S = 2.0
    LOGS_EVERY_S = 10.0  # a remote backend's output is asked of its service: less often

    def __init__(self, run: "Run", backend: "Backend") -> None:
        self.run, self.backend = run, backend
        self.spec = _spec_of(run.folder)
        self.state = backend.status(run)
        self.asked_at = time.monotonic()
        self.logs_at = -self.LOGS_EVERY_S
        self.latest_line: str | None = None

    def refresh(self) -> None:
        if time.monotonic() - self.asked_at >= self.STATE_EVERY_S:
            self.state, self.asked_at = self.backend.status(self.run), time.monotonic()

    def render(self):
        from runner.reports.watching import panel, read_progress

        here = self.backend.folder_is_here or (self.run.folder / METRICS).is_file()  # or fetched already
        progress = None
        if here and self.spec is not None:
            progress = read_progress(self.run.folder, self.spec, self.run.record.backend, self.run.record.submitted_at)
        elif not self.state.live or time.monotonic() - self.logs_at >= self.LOGS_EVERY_S:
            self.latest_line, self.logs_at = _latest_progress_line(self.backend, self.run), time.monotonic()
        return panel(self.run.folder.name, self.run.record.backend, self.state.describe(), progress, self.latest_line)


def _spec_of(folder: Path):
    from runner.runs.paths import RunPaths
    from runner.spec.load import load_spec

    paths = RunPaths(folder)
    for path in (paths.spec, paths.job_spec):
        if path.is_file():
            return load_spec(path)
    return None


def _latest_progress_line(backend, run) -> str | None:
    """The job's latest step or epoch line in its output (a backend whose folder is elsewhere)."""
    last = None
    for line in backend.logs(run, False):
        if line.startswith(("step ", "epoch ")):
            last = line
    return last
