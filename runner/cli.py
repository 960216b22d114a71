"""The `gpujob` command. Heavy imports (torch, the backends' SDKs) happen inside the
commands, so `gpujob --help` answers at once. Every GpujobError is printed here, once,
as one line, with its exit code; users never see a traceback for their own mistakes."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from runner.errors import GpujobError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run PyTorch training jobs from YAML specs on CPU or rented GPUs.")

SpecArg = typer.Argument(..., help="job spec (YAML)", show_default=False)
SetOpt = typer.Option(None, "--set", help="override a field by dotted path, e.g. train.epochs=1 (repeatable)")
RunsDirOpt = typer.Option(Path("runs"), "--runs-dir", help="where run folders are created")


def user_errors(command):
    """Print a GpujobError as one line and exit with its code; Ctrl-C exits 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GpujobError as err:
            typer.echo(f"gpujob: {err.message}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("gpujob: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _load(spec: Path, overrides: Optional[List[str]], **fields):
    from runner.spec import load_spec

    return load_spec(spec, overrides or [], **fields)


@app.command()
@user_errors
def submit(
    spec: Path = SpecArg,
    backend: Optional[str] = typer.Option(None, "--backend", help="local | modal | docker | vast | slurm"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="TYPE[:COUNT], e.g. A10G:2, or cpu; with --backend "
                                      "docker also all or a count of this machine's GPUs"),
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, take a few CPU steps, print the plan; run nothing"),
    detach: bool = typer.Option(False, "--detach", help="start the job and return (--backend modal); "
                                "`gpujob status RUN` and `gpujob fetch RUN` pick it up later"),
):
    """Run a job on its backend and bring the run folder back."""
    from runner.backends import get_backend
    from runner.errors import bad_input

    docker_gpus = None
    if gpu is not None and (gpu == "all" or gpu.isdigit()):
        docker_gpus, gpu = gpu, None  # this machine's GPUs for the docker backend, not a catalogue type
    job = _load(spec, set_, backend=backend, **{"resources.gpu": gpu, "docker.gpus": docker_gpus})
    if docker_gpus is not None and job.backend != "docker":
        raise bad_input(f"--gpu {docker_gpus}: all or a count is for --backend docker; elsewhere use TYPE[:COUNT], "
                        "e.g. A10G:2")
    chosen = get_backend(job.backend)
    if detach and not hasattr(chosen, "detach"):
        raise bad_input(f"--detach: backend {job.backend} cannot leave a job running; backend modal can")
    plan = chosen.plan(job, spec, runs_dir)
    if dry_run:
        from runner.dryrun import dry_run as dry

        _print_rows(dry(plan))
        typer.echo("dry run: nothing was submitted")
        return
    if detach:
        for line in chosen.detach(plan):
            typer.echo(line)
        return
    folder = chosen.run(plan)
    _finish(folder)


# Only the modal backend leaves jobs running today; its `.modal.json` record names the call.
RunArg = typer.Argument(..., help="a run folder submitted with --detach, or its name under --runs-dir",
                        show_default=False)


@app.command()
@user_errors
def status(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Say whether a detached run is running, finished or failed."""
    from runner.backends.modal import BACKEND, find_run

    folder = find_run(run, runs_dir)
    typer.echo(f"{folder.name}: {BACKEND.status(folder).describe()}")


@app.command()
@user_errors
def fetch(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """Download a detached run's folder from Modal's volume once the job has ended."""
    from runner.backends.modal import BACKEND, find_run

    _finish(BACKEND.fetch(find_run(run, runs_dir)))


@app.command()
@user_errors
def run(
    spec: Path = SpecArg,
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="write the run folder exactly here (new or empty)"),
    nproc_per_node: str = typer.Option("1", "--nproc-per-node", help="DDP workers on this machine, or 'auto' "
                                       "(the spec's GPU count on a CUDA machine, else resources.processes)"),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="machines in the job (start `gpujob run` on each)"),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="this machine's index, 0 .. nnodes-1"),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="address of node 0, reachable from all"),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="free port on node 0 (default 29500 "
                                              "with --nnodes > 1, any free port otherwise)"),
    resume: bool = typer.Option(False, "--resume", help="if --run-dir holds a run, continue it from its last "
                                "checkpoint (what backends pass, so a restarted machine picks up where it stopped)"),
    worker: bool = typer.Option(False, "--worker", hidden=True, help="internal: one rank started by the launcher"),
):
    """Run the job here, on whatever device is here (what images and remote machines call)."""
    started = time.perf_counter()
    job = _load(spec, set_)
    if worker:
        from runner.worker import run_worker

        run_worker(job, run_dir=run_dir, runs_dir=runs_dir, started=started, resume=resume)
        return
    from runner.errors import bad_input
    from runner.launch import Topology, run_on_this_node

    if node_rank >= nnodes:
        raise bad_input(f"--node-rank: {node_rank} is not below --nnodes {nnodes}")
    nproc = _workers_here(job, nproc_per_node)
    port = master_port or (29500 if nnodes > 1 else None)
    topology = Topology(nproc, nnodes, node_rank, master_addr, port)
    folder = run_on_this_node(job, topology, run_dir, runs_dir, started=started, resume=resume)
    if folder is not None:
        _finish(folder)


@app.command()
@user_errors
def resume(
    run_dir: Path = typer.Argument(..., help="a run folder that was stopped, preempted or killed"),
    nproc_per_node: str = typer.Option("auto", "--nproc-per-node", help="DDP workers here, or 'auto'"),
    here: bool = typer.Option(False, "--here", help="resume a SLURM run on this machine instead of "
                              "submitting it to SLURM again"),
):
    """Continue a stopped run from its last checkpoint, into the same run folder (a SLURM run
    is submitted to SLURM again)."""
    from runner.launch import Topology, run_on_this_node
    from runner.run_folder import JOB_FILES, SPEC, RunFolder

    folder = RunFolder.existing(run_dir)
    # A finished run takes the local path too, where run_on_this_node says so and submits nothing.
    if not here and not folder.finished and folder.file(JOB_FILES).joinpath("job.sbatch").exists():
        from runner.backends.slurm import BACKEND as slurm

        _finish(slurm.resume(folder.path))
        return
    job = _load(folder.file(SPEC), [])
    nproc = _workers_here(job, nproc_per_node)
    _finish(run_on_this_node(job, Topology(nproc), run_dir, run_dir.parent, resume=True))


@app.command()
@user_errors
def validate(spec: Path = SpecArg, set_: Optional[List[str]] = SetOpt):
    """Check a spec and print it resolved, with every default filled in."""
    job = _load(spec, set_)
    typer.echo(job.to_yaml(), nl=False)


@app.command()
def schema():
    """Print the spec's JSON Schema (for editor completion)."""
    from runner.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


image_app = typer.Typer(no_args_is_help=True, help="Build and push gpujob's Docker image (needs Docker).")
app.add_typer(image_app, name="image")


@image_app.command("build")
@user_errors
def image_build(
    tag: str = typer.Option("gpujob:latest", "--tag", help="NAME:TAG; for vast.ai, one in a registry it can "
                            "pull, e.g. docker.io/YOU/gpujob:1"),
    base_image: Optional[str] = typer.Option(None, "--base-image", help="base image with python3 >= 3.11 "
                                             "(default: the Dockerfile's official PyTorch CUDA image)"),
    extra_ca: Optional[Path] = typer.Option(None, "--extra-ca", help="PEM file of CA certificates to trust while "
                                            "packages download (e.g. a corporate TLS-inspecting proxy's)"),
    push: bool = typer.Option(False, "--push", help="docker push the tag after building"),
):
    """Build the image that `--backend docker` and vast.ai run, with `docker build`."""
    from runner.image import build_image

    build_image(tag, base_image, extra_ca, push)
    typer.echo(f"built {tag}" + (" and pushed it" if push else ""))


export_app = typer.Typer(no_args_is_help=True, help="Write a job out for a service gpujob does not drive.")
app.add_typer(export_app, name="export")


@export_app.command("kaggle")
@user_errors
def export_kaggle(
    spec: Path = SpecArg,
    out: Path = typer.Argument(..., help="new or empty folder to write the kernel into", show_default=False),
    set_: Optional[List[str]] = SetOpt,
    kaggle_user: Optional[str] = typer.Option(None, "--kaggle-user", envvar="KAGGLE_USERNAME",
                                              help="your Kaggle username, for the kernel's id"),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="attach a Kaggle dataset OWNER/SLUG "
                                                "(repeatable); kernels see it under /kaggle/input/"),
):
    """Write a Kaggle kernel folder that runs the job: `kaggle kernels push -p OUT`."""
    from runner.kaggle_export import export_kernel

    for line in export_kernel(_load(spec, set_), out, kaggle_user, dataset or []):
        typer.echo(line)


def _workers_here(job, nproc_per_node: str) -> int:
    """--nproc-per-node as a worker count: 'auto' asks the spec and this machine."""
    from runner.errors import bad_input
    from runner.launch import workers_per_node

    if nproc_per_node == "auto":
        return workers_per_node(job)
    if not (nproc_per_node.isdigit() and int(nproc_per_node) > 0):
        raise bad_input(f"--nproc-per-node: expected a positive number or 'auto', got '{nproc_per_node}'")
    return int(nproc_per_node)


def _print_rows(rows) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def _finish(folder: Path) -> None:
    summary = folder / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        typer.echo(f"done: test_accuracy {100 * s['test_accuracy']:.2f}%  test_loss {s['test_loss']:.4f}  "
                   f"{s['wall_s']:.1f} s on {s['device']} x{s['world_size']}")
    typer.echo(str(folder))  # last line: the run folder, for scripts


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
