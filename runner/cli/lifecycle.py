"""The lifecycle commands: resume, status, logs, cancel, fetch and runs. Each finds the run (a
folder, or its name under --runs-dir) and asks the backend its record names; none names a
backend itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from runner.cli.app import RunArg, RunsDirOpt, app, detached_lines, finish, user_errors, workers_here
from runner.errors import BAD_INPUT, GpujobError, bad_input
from runner.runs import record as run_record
from runner.runs.state import FINISHED, Run, acting_on, refuse_live


def find_run(run: str | Path, runs_dir: Path) -> Run:
    """A run given as its folder or as its name under runs_dir; exit 2 when it is not a run."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if candidate.is_dir():
            return Run(candidate, run_record.read(candidate))
    raise bad_input(f"{run}: no such run folder (nor {Path(runs_dir) / str(run)})")


def resume_run(run: Run, detach: bool, here: bool, workers_here, overrides: list[str] | None = None) -> bool:
    """`gpujob resume`: continue the run on its backend, or with `here` on this machine with
    workers_here(spec) workers (checked before anything is touched). `overrides` (train.epochs,
    train.max_steps) train it further, a finished run too. False when it had finished."""
    from runner.backends.registry import HERE, get_backend
    from runner.cli.extending import budget_raise, extend, extension, raise_budget
    from runner.runs.folder import RunFolder
    from runner.spec.load import load_spec

    from runner.usercode.imports import CODE_PATHS, code_paths_for

    origin = run.record.submitted_from
    if origin.get("spec"):  # the factories the spec names are found where they were at submission
        os.environ[CODE_PATHS] = code_paths_for(origin["spec"], origin.get("cwd"))
    backend = get_backend(run.record.backend)
    workers = longer = None
    if here or backend.resumes_here:
        RunFolder.existing(run.folder)
    budget, overrides = budget_raise(run, overrides or [], backend.rents)
    if overrides:
        longer = extension(run, overrides, here or backend.resumes_here)
    if here or backend.resumes_here:
        workers = workers_here(longer or load_spec(run.paths.spec))
    with acting_on(run, "resuming"):
        state = backend.status(run)
        refuse_live(run, state, "resuming")
        if state.state == FINISHED and longer is None:
            return False
        if longer is not None:
            extend(run, longer)
        if budget is not None:
            raise_budget(run, budget)
        run.record.note("resumed")
        if workers is not None and not backend.resumes_here:
            run.record.note(f"moved here from backend {run.record.backend}")
            run.record.backend = HERE  # the record names the backend that runs the job now
        run_record.write(run.folder, run.record)
        if workers is not None:
            get_backend(HERE).resume_with(run, workers, detach)
        else:
            backend.resume(run, detach)
    return True


@app.command()
@user_errors
def resume(
    run: str = RunArg,
    runs_dir: Path = RunsDirOpt,
    detach: bool = typer.Option(False, "--detach", help="start it again and return"),
    here: bool = typer.Option(False, "--here", help="continue it on this machine, whichever backend ran it"),
    nproc_per_node: str = typer.Option("auto", "--nproc-per-node", metavar="N|auto", help="DDP workers when it continues here, "
                                       "or 'auto'"),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="train it further: train.epochs=N "
                                             "or train.max_steps=N, more than it has done (a finished run too); "
                                             "or raise its budget: resources.max_usd=X"),
    notify: Optional[List[str]] = typer.Option(None, "--notify", metavar="URL", help="a webhook the job tells when it "
                                               "resumes and ends (repeatable; a run folder keeps none)"),
):
    """Continue a stopped run from its last checkpoint.

    A cancelled, preempted, killed or failed run continues into the same run folder, on the
    backend that ran it (a SLURM run goes back to SLURM), or here with --here. With
    --set train.epochs=N, a finished or stopped run trains on to N epochs."""
    from runner.cli.lifecycle import find_run, resume_run
    from runner.reports.notify import hand_to_job

    found = find_run(run, runs_dir)
    hand_to_job([], notify or [], found.record.backend)  # in the environment only: a webhook is a credential
    try:
        resumed = resume_run(found, detach, here, lambda spec: workers_here(spec, nproc_per_node), set_)
    except GpujobError as err:
        if err.run_dir is None and err.exit_code != BAD_INPUT:  # a refused resume changed nothing: no folder to name
            err.run_dir = found.folder
        raise
    if not resumed:
        typer.echo(f"gpujob: {found.folder} already finished; nothing to resume", err=True)
        finish(found.folder)
        return
    if detach:
        detached_lines(found, "resumed")
        return
    finish(found.folder)


@app.command()
@user_errors
def status(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Say where a run stands, and why.

    One of pending, running, finished, failed, cancelled, preempted, with a line of detail."""
    from runner.backends.registry import get_backend
    from runner.cli.lifecycle import find_run
    from runner.runs.state import record_state

    found = find_run(run, runs_dir)
    state = get_backend(found.record.backend).status(found)
    record_state(found, state)
    typer.echo(f"{found.folder.name}: {state.describe()}")
    if state.live:
        from runner.runs.lines import latest_prediction

        said = latest_prediction(found.folder)
        if said:
            typer.echo(said)


@app.command()
@user_errors
def logs(run: str = RunArg, runs_dir: Path = RunsDirOpt,
         follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends")):
    """Print a run's output; --follow until it ends."""
    from runner.backends.registry import get_backend
    from runner.cli.lifecycle import find_run

    found = find_run(run, runs_dir)
    for line in get_backend(found.record.backend).logs(found, follow):
        typer.echo(line)


@app.command()
@user_errors
def cancel(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Stop a run; it checkpoints first where it can.

    `gpujob resume RUN` continues it. Safe to repeat."""
    from runner.backends.registry import get_backend
    from runner.cli.lifecycle import find_run
    from runner.runs.state import record_state

    found = find_run(run, runs_dir)
    backend = get_backend(found.record.backend)
    typer.echo(backend.cancel(found))
    record_state(found, backend.status(found))


@app.command()
@user_errors
def fetch(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Bring a run's folder here (Modal's volume, vast.ai)."""
    from runner.backends.registry import get_backend
    from runner.cli.lifecycle import find_run

    found = find_run(run, runs_dir)
    typer.echo(get_backend(found.record.backend).fetch(found), err=True)
    finish(found.folder)


runs_app = typer.Typer(help="List the runs under --runs-dir, newest first; `runs rm RUN...` removes old ones.")
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
@user_errors
def list_runs(ctx: typer.Context, runs_dir: Path = RunsDirOpt,
              as_json: bool = typer.Option(False, "--json", help="one JSON object per run, for scripts")):
    """List the runs under --runs-dir, newest first.

    States of runs on a service are as gpujob last saw them; `gpujob status RUN` asks."""
    from runner.cli.runs_table import collect, table

    if ctx.invoked_subcommand is not None:
        return
    rows = collect(runs_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for line in table(rows):
            typer.echo(line)


@runs_app.command("rm")
@user_errors
def remove(ctx: typer.Context,
           runs: List[str] = typer.Argument(..., help="run folders, or their names under --runs-dir", metavar="RUN...",
                                       show_default=False),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", metavar="DIR", help="where run folders are "
                                                   "(default: as given to `runs`, else runs)")):
    """Remove finished, failed or stopped runs' folders; never a live one.

    Each RUN must be a folder gpujob made (it has a submission.json) whose job is not live (the
    liveness `status` asks for); otherwise nothing at all is removed (exit 2). Asks nothing."""
    from runner.cli.lifecycle import find_run, remove_runs

    given_to_runs = ctx.parent.params.get("runs_dir") if ctx.parent else None
    runs_dir = runs_dir or given_to_runs or Path("runs")
    found: dict[Path, Run] = {}
    for run in runs:  # one run named twice is one run
        one = find_run(run, runs_dir)
        found.setdefault(one.folder.resolve(), one)
    for folder in remove_runs(list(found.values())):
        typer.echo(f"removed {folder}")


def remove_runs(runs: list[Run]) -> list[Path]:
    """Delete the runs' folders, once every one of them is known not to be live: each is held
    (no other gpujob command acts on it meanwhile) and asked of its backend first."""
    import shutil
    from contextlib import ExitStack

    from runner.backends.registry import known_backend

    with ExitStack() as held:
        for run in runs:
            backend = known_backend(run.record.backend)
            if backend is None:
                raise bad_input(f"{run.folder}: ran on backend '{run.record.backend}', which this gpujob does not know; "
                                "not removing it")
            kept = backend.kept_elsewhere(run)
            if kept:
                raise bad_input(f"{run.folder}: {kept}; not removing it, which would lose the only way to it")
            held.enter_context(acting_on(run, "removing"))
            refuse_live(run, backend.status(run), "removing")
        for run in runs:
            shutil.rmtree(run.folder)
    return [run.folder for run in runs]
