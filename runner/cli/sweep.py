"""`gpujob sweep SPEC`: a grid or a search over some of the spec's fields, each trial an ordinary
run folder inside the sweep's folder; and `gpujob sweep show|status|cancel|resume SWEEP`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from runner.cli.app import RunsDirOpt, SetOpt, app, load_job, user_errors
from runner.invocation import command
from runner.errors import bad_input

VERBS = ("show", "status", "cancel", "resume", "work")  # work: one process of a parallel sweep (internal)


@app.command(no_args_is_help=True)
@user_errors
def sweep(
    target: List[str] = typer.Argument(..., metavar="SPEC | show|status|cancel|resume SWEEP", show_default=False,
                                       help="a job spec to sweep, or a verb and a sweep folder"),
    grid: Optional[List[str]] = typer.Option(None, "--grid", metavar="FIELD=V1,V2",
                                             help="an axis: a field and its values, or a range to sample: "
                                             "FIELD=log(LOW,HIGH), uniform(LOW,HIGH), int(LOW,HIGH) (repeatable)"),
    random: Optional[int] = typer.Option(None, "--random", metavar="N", help="draw N trials at random from the axes"),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="S", help="the sampler's seed (default: sweep.seed, 0)"),
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="check every trial's spec, print trials x estimated "
                                 "time x $; run nothing"),
    parallel: int = typer.Option(1, "--parallel", metavar="N", help="trials at once here, each in a process of "
                                 "its own (at most the cores there are)"),
    detach: bool = typer.Option(False, "--detach", help="start the sweep and return; `gpujob sweep status|cancel "
                                "SWEEP` pick it up from any terminal"),
):
    """Run a sweep of trials over some of a spec's fields; show, check, cancel or resume one."""
    if target[0] in VERBS:
        if len(target) != 2:
            raise bad_input(f"gpujob sweep {target[0]} SWEEP: give one sweep folder")
        return _lifecycle(target[0], _sweep_folder(target[1], runs_dir), parallel, detach)
    if len(target) != 1:
        raise bad_input(f"gpujob sweep SPEC: one spec, not {len(target)} arguments (or a verb: {', '.join(VERBS)})")
    from runner.sweeps import driver

    spec = Path(target[0])
    job = load_job(spec, set_)
    plan = driver.plan_sweep(job, spec, runs_dir, grid or [], random, seed)
    if dry_run:
        from runner.cli.sweep_dryrun import sweep_dry_run

        r = plan.record
        fields = [axis["field"] for axis in r.axes]
        for line in sweep_dry_run(plan.specs, fields, r.planned, r.sampler, job, spec, runs_dir, r.max_usd):
            typer.echo(line)
        typer.echo("dry run: nothing was run")
        return
    if _runs_here(plan.record.backend):
        driver.check_parallel(parallel)
    folder = driver.start(plan)
    typer.echo(f"sweep {folder.name}: {plan.record.planned} trials ({plan.record.sampler}) of {spec}, "
               f"{plan.record.metric} ({plan.record.goal}); each trial a run folder in {folder}")
    _say_estimate(job, plan.record)
    _run_and_report(folder, parallel, detach)


def _say_estimate(job, sweep) -> None:
    """Where trials rent GPUs: what the sweep should cost, from the GPU catalog, beside its budget."""
    from runner.backends.registry import get_backend
    from runner.reports.estimate import before_run

    if not get_backend(sweep.backend).rents:
        return
    guess = before_run(job.model_copy(update={"sweep": None})) or {}
    if guess.get("total_usd") is not None:
        budget = f" (budget ${sweep.max_usd:g})" if sweep.max_usd else ""
        typer.echo(f"gpujob: estimate before the sweep: {sweep.planned} trials x ~${guess['total_usd']:.4f} = "
                   f"~${sweep.planned * guess['total_usd']:.4f}{budget}", err=True)


def _runs_here(backend: str) -> bool:
    """Whether this machine drives the trials (here, or as submissions to Modal, vast.ai, Docker),
    rather than the backend's own fan-out (a SLURM array)."""
    from runner.backends.registry import get_backend

    return not get_backend(backend).fans_out


def _run_and_report(folder: Path, parallel: int, detach: bool) -> None:
    from runner.sweeps import driver
    from runner.sweeps import record as rec
    from runner.sweeps.lifecycle import start_detached
    from runner.sweeps.report import summary_lines

    sweep = rec.read(folder)
    if not _runs_here(sweep.backend):
        handles = driver.fan_out(folder, sweep.max_parallel)
        typer.echo(f"sweep {folder.name}: trials handed to {sweep.backend} ({', '.join(map(str, handles.values()))})")
        code = 0 if detach else driver.follow(folder, say=typer.echo)
    elif detach:
        start_detached(folder, parallel)
        typer.echo(f"sweep {folder.name} runs without this terminal")
        typer.echo(f"  its state:  {command(f'gpujob sweep status {folder}')}")
        typer.echo(f"  stop it:    {command(f'gpujob sweep cancel {folder}')}")
        typer.echo(str(folder))
        return
    else:
        code = driver.run_here(folder, parallel, say=typer.echo)
    if detach:
        typer.echo(f"  its state:  {command(f'gpujob sweep status {folder}')}")
        typer.echo(str(folder))
        return
    for line in summary_lines(folder, rec.read(folder)):
        typer.echo(line)
    typer.echo(str(folder))  # last line: the sweep folder, for scripts
    if code:
        raise typer.Exit(code)


def _sweep_folder(given: str, runs_dir: Path) -> Path:
    from runner.sweeps.record import is_sweep

    for candidate in (Path(given), Path(runs_dir) / given):
        if is_sweep(candidate):
            return candidate
    raise bad_input(f"{given}: no such sweep folder (nor {Path(runs_dir) / given})")


def _lifecycle(verb: str, folder: Path, parallel: int, detach: bool) -> None:
    from runner.sweeps import driver
    from runner.sweeps import lifecycle
    from runner.sweeps.report import summary_lines, write_report

    if verb == "show":
        for line in summary_lines(folder, write_report(folder)):
            typer.echo(line)
    elif verb == "status":
        for line in lifecycle.status_lines(folder):
            typer.echo(line)
    elif verb == "cancel":
        typer.echo(lifecycle.cancel(folder))
    elif verb == "work":
        code = driver.work_in_this_worker(folder, say=typer.echo)
        if code:
            raise typer.Exit(code)
    else:
        _resume(folder, parallel, detach)


def _resume(folder: Path, parallel: int, detach: bool) -> None:
    from runner.sweeps import claims, driver
    from runner.sweeps import lifecycle
    from runner.sweeps import record as rec

    sweep = rec.read(folder)
    if _runs_here(sweep.backend):
        driver.check_parallel(parallel)
    if sweep.state == rec.FINISHED:
        typer.echo(f"{folder.name} finished: every trial ended; nothing to resume ({command(f'gpujob sweep show {folder}')})")
        return
    if lifecycle.live(folder, sweep) is not None:
        raise bad_input(f"{folder} is running; `{command(f'gpujob sweep status {folder}')}`, "
                        f"`{command(f'gpujob sweep cancel {folder}')}`")
    claims.reclaim_orphans(folder)
    if not detach or not _runs_here(sweep.backend):
        with rec.updating(folder) as record:
            record.note("resumed")
    _run_and_report(folder, parallel, detach)
