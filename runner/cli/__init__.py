"""The `gpujob` command. Heavy imports (torch, the backends' SDKs) happen inside the
commands, so `gpujob --help` answers at once. Every GpujobError is printed here, once,
as one line, with its exit code; users never see a traceback for their own mistakes.

The commands name no backend: `submit` asks runner/backends/auto.py where a job goes, and the
lifecycle commands (status, logs, cancel, fetch, resume) ask the backend its record names.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from runner.cli import interrupts

interrupts.install_if_this_is_gpujob()  # first: a Ctrl-C while typer, torch and the rest import is one line too

import typer  # noqa: E402

from runner.backends import AUTO, NAMES  # noqa: E402
from runner.errors import GpujobError  # noqa: E402

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


def _load(spec: Path, overrides: Optional[List[str]], worker: bool = False, **fields):
    from runner.training.datasets import CODE_PATHS, code_paths_for
    from runner.spec.model import load_spec
    from runner.usercode.shipping import SHIPPED_CODE

    if not worker:  # a spec's package.module:factory is found beside it or here, in its workers too;
        # first in the code shipped with the job, where a backend put it (e.g. /job/code)
        shipped = os.environ.get(SHIPPED_CODE)
        os.environ[CODE_PATHS] = os.pathsep.join(filter(None, [shipped, code_paths_for(spec)]))
    return load_spec(spec, overrides or [], **fields)


@app.command()
@user_errors
def submit(
    spec: Path = SpecArg,
    backend: Optional[str] = typer.Option(None, "--backend", metavar="BACKEND", help=f"{' | '.join((AUTO, *NAMES))} (default: the "
                                          "spec's; auto: here if this machine has the GPU, else Modal)"),
    gpu: Optional[str] = typer.Option(None, "--gpu", metavar="TYPE[:N]", help="TYPE[:COUNT], e.g. A10G:2, or cpu; with --backend "
                                      "docker also all or a count of this machine's GPUs"),
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, take a few CPU steps, print the plan; "
                                 "run nothing"),
    detach: bool = typer.Option(False, "--detach", help="start the job and return; `gpujob status|logs|cancel|"
                                "fetch RUN` pick it up from any terminal"),
):
    """Run a job on its backend and bring the run folder back."""
    from runner.backends import get_backend
    from runner.backends.auto import MACHINE_GPUS, choose_backend, gpu_option

    fields = gpu_option(gpu)
    job = _load(spec, set_, backend=backend, **fields)
    name, why = choose_backend(job, machine_gpus=bool(fields.get(MACHINE_GPUS)))
    chosen = get_backend(name)
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
        _detached_lines(run, "submitted")
        return
    _finish(run.folder)


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
    from runner.backends import Run
    from runner.cli.lifecycle import acting_on
    from runner.runs.folder import RunFolder
    from runner.runs.record import new_submission

    made_runs_dir = not plan.runs_dir.exists()
    expected = _estimate_before_run(plan)
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
        _ship_code(plan, folder.path)
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


def _ship_code(plan, folder: Path) -> None:
    """The user's code, copied into the run's job/code for a backend that sends it, and imported
    from that copy alone: what the copy lacks is said now, before a queue or a rental."""
    from runner.runs.paths import JOB
    from runner.usercode.shipping import CODE_DIR, check_imports, code_fields

    if not (plan.ships_code and code_fields(plan.spec)):
        return
    job_dir = folder / JOB
    (job_dir / CODE_DIR).mkdir(parents=True, exist_ok=True)  # the backends point the job at it
    if plan.code is not None:
        root = plan.code.copy_into(job_dir)
        python = plan.spec.slurm.python if plan.backend == "slurm" else None  # the nodes' Python, as they run it
        check_imports(plan.code, root, python)


def _estimate_before_run(plan) -> dict | None:
    """For a job that rents GPUs: the time and dollars it should take, kept in the record for
    cost.json, so the bill can be held against it. The backend says it once the service has
    answered, just before it rents anything (`runner.reports.estimate.announce`)."""
    from runner.cli.dryrun import REMOTE

    if plan.backend not in REMOTE or plan.spec.resources.gpu_request is None:
        return None
    from runner.reports.estimate import before_run

    return before_run(plan.spec, plan.runs_dir)


def _after_failed_submit(chosen, folder, err: BaseException) -> None:
    """Bad input, or a stop before anything was trained here, leaves nothing; otherwise the
    folder stays (for a remote job it is the only handle) and keeps what was seen."""
    from runner.backends import Run
    from runner.errors import BAD_INPUT
    from runner.cli.lifecycle import record_state, state_of_error
    from runner.runs.record import is_run, read
    from runner.training.stops import INTERRUPTED, PREEMPTED

    if not (folder.path.is_dir() and is_run(folder.path)):
        return  # the worker already took back what it made
    code = getattr(err, "exit_code", INTERRUPTED)
    if code == BAD_INPUT or not read(folder.path).handles:
        folder.remove_if_unstarted()
    elif chosen.folder_is_here and code in (INTERRUPTED, PREEMPTED):
        folder.discard_unstarted()  # refused once anything was trained
    if folder.path.is_dir() and is_run(folder.path):
        record_state(Run(folder.path, read(folder.path)), state_of_error(err))


def _detached_lines(run, what: str) -> None:
    from runner.backends import get_backend

    backend = get_backend(run.record.backend)
    note = getattr(backend, "detached_note", None)
    typer.echo(f"{what} {run.folder.name} to {run.record.backend}; it runs without this terminal"
               + (f". {note(run)}" if note else ""))
    typer.echo(f"  follow it:  gpujob logs {run.folder} --follow")
    typer.echo(f"  its state:  gpujob status {run.folder}")
    typer.echo(f"  stop it:    gpujob cancel {run.folder}")
    typer.echo(str(run.folder))  # last line: the run folder, for scripts


@app.command()
@user_errors
def run(
    spec: Path = SpecArg,
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", metavar="DIR", help="write the run folder exactly here (new or empty)"),
    nproc_per_node: str = typer.Option("1", "--nproc-per-node", metavar="N|auto", help="DDP workers on this machine, or 'auto' "
                                       "(the spec's GPU count on a CUDA machine, else resources.processes)"),
    # Node options are text, checked by runner.training.distributed.node_options: a bad one is one line, exit 2.
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
    job = _load(spec, set_, worker=worker)
    if worker:
        from runner.launching.worker import run_worker

        # under gpujob's launcher, the launcher keeps the time limit (SLURM's tasks keep their own)
        run_worker(job, run_dir=run_dir, runs_dir=runs_dir, started=started, resume=resume,
                   keeps_time_limit=not launched_at)
        return
    from runner.training.distributed import node_options
    from runner.launching.launcher import Topology, run_on_this_node

    nodes, rank, addr, port = node_options(nnodes, node_rank, master_addr, master_port)
    topology = Topology(_workers_here(job, nproc_per_node), nodes, rank, addr, port)
    folder = run_on_this_node(job, topology, run_dir, runs_dir, started=started, resume=resume)
    if folder is not None:
        _finish(folder)


@app.command()
@user_errors
def resume(
    run: str = RunArg,
    runs_dir: Path = RunsDirOpt,
    detach: bool = typer.Option(False, "--detach", help="start it again and return"),
    here: bool = typer.Option(False, "--here", help="continue it on this machine, whichever backend ran it"),
    nproc_per_node: str = typer.Option("auto", "--nproc-per-node", metavar="N|auto", help="DDP workers when it continues here, "
                                       "or 'auto'"),
):
    """Continue a stopped run from its last checkpoint.

    A cancelled, preempted, killed or failed run continues into the same run folder, on the
    backend that ran it (a SLURM run goes back to SLURM), or here with --here."""
    from runner.cli.lifecycle import find_run, resume_run

    found = find_run(run, runs_dir)
    try:
        resumed = resume_run(found, detach, here, lambda spec: _workers_here(spec, nproc_per_node))
    except GpujobError as err:
        err.run_dir = err.run_dir or found.folder
        raise
    if not resumed:
        typer.echo(f"gpujob: {found.folder} already finished; nothing to resume", err=True)
        _finish(found.folder)
        return
    if detach:
        _detached_lines(found, "resumed")
        return
    _finish(found.folder)


@app.command()
@user_errors
def status(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Say where a run stands, and why.

    One of pending, running, finished, failed, cancelled, preempted, with a line of detail."""
    from runner.backends import get_backend
    from runner.cli.lifecycle import find_run, record_state

    found = find_run(run, runs_dir)
    state = get_backend(found.record.backend).status(found)
    record_state(found, state)
    typer.echo(f"{found.folder.name}: {state.describe()}")


@app.command()
@user_errors
def logs(run: str = RunArg, runs_dir: Path = RunsDirOpt,
         follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends")):
    """Print a run's output; --follow until it ends."""
    from runner.backends import get_backend
    from runner.cli.lifecycle import find_run

    found = find_run(run, runs_dir)
    for line in get_backend(found.record.backend).logs(found, follow):
        typer.echo(line)


@app.command()
@user_errors
def cancel(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Stop a run; it checkpoints first where it can.

    `gpujob resume RUN` continues it. Safe to repeat."""
    from runner.backends import get_backend
    from runner.cli.lifecycle import find_run, record_state

    found = find_run(run, runs_dir)
    backend = get_backend(found.record.backend)
    typer.echo(backend.cancel(found))
    record_state(found, backend.status(found))


@app.command()
@user_errors
def fetch(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Bring a run's folder here (Modal's volume, vast.ai)."""
    from runner.backends import get_backend
    from runner.cli.lifecycle import find_run

    found = find_run(run, runs_dir)
    typer.echo(get_backend(found.record.backend).fetch(found), err=True)
    _finish(found.folder)


@app.command("runs")
@user_errors
def list_runs(runs_dir: Path = RunsDirOpt,
              as_json: bool = typer.Option(False, "--json", help="one JSON object per run, for scripts")):
    """List the runs under --runs-dir, newest first.

    States of runs on a service are as gpujob last saw them; `gpujob status RUN` asks."""
    from runner.cli.runs_table import collect, table

    rows = collect(runs_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for line in table(rows):
            typer.echo(line)


@app.command()
@user_errors
def validate(spec: Path = SpecArg, set_: Optional[List[str]] = SetOpt):
    """Check a spec and print it with every default filled in."""
    from runner.usercode.shipping import check_callables, find_user_code

    job = _load(spec, set_)
    find_user_code(job, spec)  # each module found, and not too big to ship
    check_callables(job)
    typer.echo(job.to_yaml(), nl=False)


@app.command()
def schema():
    """Print the spec's JSON Schema (for editor completion)."""
    from runner.spec.model import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


image_app = typer.Typer(no_args_is_help=True, help="Build and push gpujob's Docker image (needs Docker).")
app.add_typer(image_app, name="image")


@image_app.command("build")
@user_errors
def image_build(
    tag: str = typer.Option("gpujob:latest", "--tag", metavar="NAME:TAG", help="NAME:TAG; for vast.ai, one in a registry it can "
                            "pull, e.g. docker.io/YOU/gpujob:1"),
    base_image: Optional[str] = typer.Option(None, "--base-image", metavar="IMAGE", help="base image with python3 >= 3.11 "
                                             "(default: the Dockerfile's official PyTorch CUDA image)"),
    extra_ca: Optional[Path] = typer.Option(None, "--extra-ca", metavar="PEM", help="PEM file of CA certificates to trust while "
                                            "packages download (e.g. a corporate TLS-inspecting proxy's)"),
    push: bool = typer.Option(False, "--push", help="docker push the tag after building"),
):
    """Build the image that `--backend docker` and vast.ai run, with `docker build`."""
    from runner.backends.docker.image import build_image

    build_image(tag, base_image, extra_ca, push)
    typer.echo(f"built {tag}" + (" and pushed it" if push else ""))


export_app = typer.Typer(no_args_is_help=True, help="Write a job out for a service gpujob does not drive.")
app.add_typer(export_app, name="export")


@export_app.command("kaggle")
@user_errors
def export_kaggle(
    spec: Path = SpecArg,
    out: Path = typer.Argument(..., help="new or empty folder to write the kernel into", show_default=False,
                               metavar="OUT"),
    set_: Optional[List[str]] = SetOpt,
    kaggle_user: Optional[str] = typer.Option(None, "--kaggle-user", metavar="NAME", envvar="KAGGLE_USERNAME",
                                              help="your Kaggle username, for the kernel's id"),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", metavar="OWNER/SLUG", help="attach a Kaggle dataset OWNER/SLUG "
                                                "(repeatable); kernels see it under /kaggle/input/"),
):
    """Write a Kaggle kernel folder that runs the job: `kaggle kernels push -p OUT`."""
    from runner.backends.kaggle.export import export_kernel

    from runner.usercode.shipping import find_user_code

    job = _load(spec, set_)
    for line in export_kernel(job, out, kaggle_user, dataset or [], find_user_code(job, spec)):
        typer.echo(line)


def _workers_here(job, nproc_per_node: str) -> int:
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


def print_rows(rows) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


from runner.cli.reports import register as _register_reports  # noqa: E402  (after the options it reuses)

_register_reports(app, user_errors, SpecArg, SetOpt, RunsDirOpt, RunArg, _load)

INNER_RUN = "GPUJOB_INNER_RUN"  # set by backends whose `gpujob run` reports to a gpujob outside it


def _finish(folder: Path) -> None:
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


def main() -> None:
    interrupts.install()
    if "--worker" in sys.argv:
        _worker_main()
    app()


def _worker_main() -> None:
    """One rank's process (`run ... --worker`) ends with os._exit once its work is done and its
    output flushed. At interpreter shutdown gloo's threads may still hold work objects whose
    destruction aborts the process (SIGABRT, "terminate called without an active exception",
    seen here on SLURM once the job had finished), turning a rank's 0 or 1 into 134; every file
    the worker writes is already written and fsync'd by then, so nothing is lost by skipping it."""
    try:
        code = app(standalone_mode=False)
    except SystemExit as err:
        code = err.code
    except BaseException:  # what the command's own handler did not turn into an exit code
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)


