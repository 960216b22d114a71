"""`gpujob submit` (where a job goes, its plan, its run folder, then its backend) and `gpujob run`
(the job on this machine: what images, remote machines and batch scripts call)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from runner.cli.app import (RunsDirOpt, SetOpt, SpecArg, app, detached_lines, finish, load_job, print_rows,
                            user_errors, workers_here)
from runner.errors import GpujobError
from runner.spec.model import AUTO, BACKENDS
from runner.training import meter
from runner.training.meter import unpriced_budget


@app.command()
@user_errors
def submit(
    spec: Path = SpecArg,
    backend: Optional[str] = typer.Option(None, "--backend", metavar="BACKEND", help=f"{' | '.join((AUTO, *BACKENDS))} (default: the "
                                          "spec's; auto: here if this machine has the GPU, else Modal)"),
    gpu: Optional[str] = typer.Option(None, "--gpu", metavar="TYPE[:N]", help="TYPE[:COUNT], e.g. A10G:2, or cpu; with --backend "
                                      "docker also all or a count of this machine's GPUs"),
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, take a few CPU steps, print the plan; "
                                 "run nothing"),
    detach: bool = typer.Option(False, "--detach", help="start the job and return; `gpujob status|logs|cancel|"
                                "fetch RUN` pick it up from any terminal"),
    notify: Optional[List[str]] = typer.Option(None, "--notify", metavar="URL", help="a webhook the job tells when it "
                                               "starts and ends (repeatable; kept out of the run folder)"),
):
    """Run a job on its backend and bring the run folder back."""
    from runner.backends.registry import get_backend
    from runner.backends.auto import MACHINE_GPUS, choose_backend, gpu_option
    from runner.reports.notify import hand_to_job

    fields = gpu_option(gpu)
    job = load_job(spec, set_, backend=backend, **fields)
    name, why = choose_backend(job, machine_gpus=bool(fields.get(MACHINE_GPUS)))
    chosen = get_backend(name)
    if not chosen.rents and unpriced_budget(job, f"backend {name}"):
        raise unpriced_budget(job, f"backend {name}")
    hand_to_job(job.notify, notify or [], name)  # in the environment, never in a file: a webhook is a credential
    chosen.check_costless(job, sending=not dry_run)  # before torch, timed steps or an estimate
    plan = _plan(chosen, job, spec, runs_dir)
    if why and not dry_run:  # after planning: a spec the backend refuses gets its one line alone
        typer.echo(f"gpujob: backend {name} (auto): {why}", err=True)
    if dry_run:
        from runner.cli.dryrun import dry_run as dry

        rows = dry(plan)
        print_rows(rows[:1] + ([("why this backend", why)] if why else []) + rows[1:])
        typer.echo("dry run: nothing was submitted")
        return
    run = _start_run(chosen, plan, spec, detach)
    if detach:
        detached_lines(run, "submitted")
        return
    finish(run.folder)


def _plan(chosen, job, spec_path: Path, runs_dir: Path):
    from runner.runs.folder import RunFolder
    from runner.usercode.shipping import find_user_code

    code = find_user_code(job, spec_path)  # before the backend's plan: a missing module is the spec's error
    plan = chosen.plan(job, spec_path, runs_dir, RunFolder.free_name(runs_dir, job.name))
    plan.code, plan.ships_code = code, chosen.ships_code
    return plan


def _start_run(chosen, plan, spec_path: Path, detach: bool):
    """Make the run folder (its record first), then hand the plan to the backend. A submission
    that fails before the job started leaves no folder behind."""
    from runner.runs.state import Run
    from runner.runs.state import acting_on
    from runner.runs.folder import RunFolder
    from runner.runs.record import new_submission

    made_runs_dir = not plan.runs_dir.exists()
    expected = _estimate_before_run(chosen, plan)
    folder = None
    try:
        for _ in range(3):
            record = new_submission(plan.backend, plan.run_name, plan.spec, spec_path, detach, plan.world_size)
            record.estimate = expected or {}
            try:
                folder = RunFolder.start(plan.folder, record)
                break
            except FileExistsError:  # another run took the name since the plan was made: plan again
                plan = _plan(chosen, plan.spec, spec_path, plan.runs_dir)
        else:
            raise GpujobError(f"--runs-dir: could not make a new run folder under {plan.runs_dir}")
        run = Run(folder.path, record)
        _ship_code(chosen, plan, folder.path)
        with acting_on(run, "submitting"):
            chosen.submit(plan, run, detach)
    except (GpujobError, KeyboardInterrupt) as err:
        if folder is not None:
            _after_failed_submit(chosen, folder, err)
        if made_runs_dir and plan.runs_dir.is_dir() and not any(plan.runs_dir.iterdir()):
            plan.runs_dir.rmdir()  # made for this run alone
        if isinstance(err, GpujobError) and folder is not None and folder.path.is_dir():
            err.run_dir = folder.path
        raise
    return run


def _ship_code(chosen, plan, folder: Path) -> None:
    """The user's code, copied into the run's job/code for a backend that sends it, and imported
    from that copy alone: what the copy lacks is said now, before a queue or a rental."""
    from runner.runs.paths import RunPaths
    from runner.usercode.shipping import CODE_DIR, check_imports, code_fields

    if not (plan.ships_code and code_fields(plan.spec)):
        return
    job_dir = RunPaths(folder).job
    (job_dir / CODE_DIR).mkdir(parents=True, exist_ok=True)  # the backends point the job at it
    if plan.code is not None:
        root = plan.code.copy_into(job_dir)
        check_imports(plan.code, root, chosen.code_python(plan.spec))


def _estimate_before_run(chosen, plan) -> dict | None:
    """For a job that rents GPUs: the time and dollars it should take, kept in the record for
    cost.json, so the bill can be held against it. The backend says it once the service has
    answered, just before it rents anything (`runner.reports.estimate.announce`)."""
    if not chosen.rents or plan.spec.resources.gpu_request is None:
        return None
    from runner.reports.estimate import before_run

    return before_run(plan.spec, plan.runs_dir)


def _after_failed_submit(chosen, folder, err: BaseException) -> None:
    """Bad input, or a stop before anything was trained here, leaves nothing; otherwise the
    folder stays (for a remote job it is the only handle) and keeps what was seen."""
    from runner.runs.state import Run
    from runner.errors import BAD_INPUT
    from runner.runs.state import record_state, state_of_error
    from runner.runs.record import is_run, read
    from runner.errors import INTERRUPTED, PREEMPTED

    if not (folder.path.is_dir() and is_run(folder.path)):
        return  # the worker already took back what it made
    code = getattr(err, "exit_code", INTERRUPTED)
    if code == BAD_INPUT or not read(folder.path).handles:
        folder.remove_if_unstarted()
    elif chosen.folder_is_here and code in (INTERRUPTED, PREEMPTED):
        folder.discard_unstarted()  # refused once anything was trained
    if folder.path.is_dir() and is_run(folder.path):
        record_state(Run(folder.path, read(folder.path)), state_of_error(err))


@app.command()
@user_errors
def run(
    spec: Path = SpecArg,
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", metavar="DIR", help="write the run folder exactly here (new or empty)"),
    nproc_per_node: str = typer.Option("1", "--nproc-per-node", metavar="N|auto", help="DDP workers on this machine, or 'auto' "
                                       "(the spec's GPU count on a CUDA machine, else resources.processes)"),
    # Node options are text, checked by runner.launching.topology.node_options: a bad one is one line, exit 2.
    nnodes: str = typer.Option("1", "--nnodes", metavar="N", help="machines in the job (start `gpujob run` on each)"),
    node_rank: str = typer.Option("0", "--node-rank", metavar="R", help="this machine's index, 0 .. nnodes-1"),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", metavar="ADDR", help="address of node 0, reachable from all"),
    master_port: Optional[str] = typer.Option(None, "--master-port", metavar="PORT", help="free port on node 0 (default 29500 "
                                              "with --nnodes > 1, any free port otherwise)"),
    resume: bool = typer.Option(False, "--resume", help="if --run-dir holds a run, continue it from its last "
                                "checkpoint (what backends pass, so a restarted machine picks up where it stopped)"),
    worker: bool = typer.Option(False, "--worker", hidden=True, help="internal: one rank started by the launcher"),
):
    """Run the job here, on whatever device this machine has.

    What images, remote machines and batch scripts call; `submit` is for you."""
    started = time.perf_counter()
    launched_at = os.environ.get("GPUJOB_STARTED_AT")  # runner.launching.launcher.STARTED_AT: a worker's job began there
    if worker and launched_at:
        started -= max(0.0, time.time() - float(launched_at))
    job = load_job(spec, set_, worker=worker)
    if not worker and meter.from_env() is None and unpriced_budget(job, "`gpujob run` here"):
        raise unpriced_budget(job, "`gpujob run` here")  # a rented backend's job is told its price
    if worker:
        from runner.launching.worker import run_worker

        # under gpujob's launcher, the launcher keeps the time limit (SLURM's tasks keep their own)
        run_worker(job, run_dir=run_dir, runs_dir=runs_dir, started=started, resume=resume,
                   keeps_time_limit=not launched_at)
        return
    from runner.launching.topology import node_options
    from runner.launching.topology import Topology
    from runner.launching.launcher import run_on_this_node

    nodes, rank, addr, port = node_options(nnodes, node_rank, master_addr, master_port)
    topology = Topology(workers_here(job, nproc_per_node), nodes, rank, addr, port)
    folder = run_on_this_node(job, topology, run_dir, runs_dir, started=started, resume=resume)
    if folder is not None:
        finish(folder)
