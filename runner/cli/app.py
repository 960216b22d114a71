"""The `gpujob` command's app, its shared options, and what every command does at its edge: a
GpujobError printed once as one line with its exit code (users never see a traceback for their
own mistakes), the run folder printed last. Heavy imports (torch, the backends' SDKs) happen
inside the commands, so `gpujob --help` answers at once."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import List, Optional

import typer

from runner.cli import interrupts
from runner.errors import GpujobError
from runner.invocation import command
from runner.usercode.imports import CODE_PATHS

# As this process was started: set by the gpujob that started it (a detached run's submit or
# resume). Read once, so that one process running several jobs (tests, a sweep) never carries
# one job's folders into the next.
_STARTED_WITH_CODE_PATHS = os.environ.get(CODE_PATHS, "")

# Plain help (no rich tables): they print a type tag such as <bool> or <list[str]> beside every option.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Run PyTorch training jobs from YAML specs on CPU or rented GPUs.")

SpecArg = typer.Argument(..., help="job spec (YAML)", show_default=False, metavar="SPEC")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE",
                      help="override a field by dotted path, e.g. train.epochs=1 (repeatable)")
RunsDirOpt = typer.Option(Path("runs"), "--runs-dir", metavar="DIR", help="where run folders are created")
RunArg = typer.Argument(..., help="a run folder, or its name under --runs-dir", show_default=False, metavar="RUN")


def user_errors(command):
    """Print a GpujobError as one line and exit with its code; Ctrl-C exits 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with interrupts.inside_a_command():
                return command(*args, **kwargs)
        except GpujobError as err:
            typer.echo(f"gpujob: {err.message}", err=True)
            if err.run_dir is not None and Path(err.run_dir).is_dir() and not os.environ.get(INNER_RUN):
                typer.echo(str(err.run_dir))  # the last line is the run folder, failure or not
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("gpujob: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"gpujob {version('gpujob')}")
        except PackageNotFoundError:
            typer.echo("gpujob (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main_options(_version_: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                                help="print gpujob's version and exit")):
    """Run PyTorch training jobs from YAML specs on CPU or rented GPUs."""


def load_job(spec: Path, overrides: Optional[List[str]], worker: bool = False, **fields):
    from runner.usercode.imports import code_paths_for
    from runner.spec.load import load_spec
    from runner.usercode.shipping import SHIPPED_CODE

    if not worker:  # a spec's package.module:factory is found beside it or here, in its workers too;
        # first in the code shipped with the job, where a backend put it (e.g. /job/code); last
        # where the process that started this one looked: a detached `gpujob run RUN/job/spec.yaml`
        # finds the code beside the spec as it was submitted (or resumed), as an attached run does
        shipped = os.environ.get(SHIPPED_CODE)
        folders = [shipped, *code_paths_for(spec).split(os.pathsep), *_STARTED_WITH_CODE_PATHS.split(os.pathsep)]
        os.environ[CODE_PATHS] = os.pathsep.join(dict.fromkeys(f for f in folders if f))
    return load_spec(spec, overrides or [], **fields)


INNER_RUN = "GPUJOB_INNER_RUN"  # set by backends whose `gpujob run` reports to a gpujob outside it


def print_rows(rows) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def workers_here(job, nproc_per_node: str) -> int:
    """--nproc-per-node as a worker count: 'auto' asks the spec and this machine."""
    from runner.errors import bad_input
    from runner.launching.launcher import workers_per_node

    if nproc_per_node == "auto":
        return workers_per_node(job)
    if not (nproc_per_node.isdigit() and int(nproc_per_node) > 0):
        raise bad_input(f"--nproc-per-node: expected a positive number or 'auto', got '{nproc_per_node}'")
    workers, batch = int(nproc_per_node), job.data.batch_size
    if batch % workers:  # the workers would each refuse it at start-up: refused here, before anything is touched
        fits = [n for n in range(1, batch + 1) if batch % n == 0 and n <= max(workers * 2, 8)]
        raise bad_input(f"--nproc-per-node: {workers} workers cannot split data.batch_size {batch} evenly; use "
                        f"one of {', '.join(map(str, fits))}")
    return workers


def finish(folder: Path) -> None:
    if os.environ.get(INNER_RUN):  # the gpujob outside says it once, with its own path for the folder
        return
    from runner.reports.show import done_lines

    try:
        for line in done_lines(folder):  # the result, and what held the run back
            typer.echo(line)
    except GpujobError as err:  # a damaged summary.json: one line, and the folder still printed last
        err.run_dir = folder
        raise
    typer.echo(str(folder))  # last line: the run folder, for scripts


def detached_lines(run, what: str) -> None:
    from runner.backends.registry import get_backend

    backend = get_backend(run.record.backend)
    note = backend.detached_note(run)
    typer.echo(f"{what} {run.folder.name} to {run.record.backend}; it runs without this terminal"
               + (f". {note}" if note else ""))
    typer.echo(f"  follow it:  {command(f'gpujob logs {run.folder} --follow')}")
    typer.echo(f"  its state:  {command(f'gpujob status {run.folder}')}")
    typer.echo(f"  stop it:    {command(f'gpujob cancel {run.folder}')}")
    typer.echo(str(run.folder))  # last line: the run folder, for scripts
