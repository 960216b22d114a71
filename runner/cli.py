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
    gpu: Optional[str] = typer.Option(None, "--gpu", help="TYPE[:COUNT], e.g. A10G:2, or cpu"),
    set_: Optional[List[str]] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, take a few CPU steps, print the plan; run nothing"),
):
    """Run a job on its backend and bring the run folder back."""
    from runner.backends import get_backend

    job = _load(spec, set_, backend=backend, **{"resources.gpu": gpu})
    chosen = get_backend(job.backend)
    plan = chosen.plan(job, spec, runs_dir)
    if dry_run:
        from runner.dryrun import dry_run as dry

        _print_rows(dry(plan))
        typer.echo("dry run: nothing was submitted")
        return
    folder = chosen.run(plan)
    _finish(folder)


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
    worker: bool = typer.Option(False, "--worker", hidden=True, help="internal: one rank started by the launcher"),
):
    """Run the job here, on whatever device is here (what images and remote machines call)."""
    started = time.perf_counter()
    job = _load(spec, set_)
    if worker:
        from runner.worker import run_worker

        run_worker(job, run_dir=run_dir, runs_dir=runs_dir, started=started)
        return
    from runner.errors import bad_input
    from runner.launch import Topology, run_on_this_node, workers_per_node

    if node_rank >= nnodes:
        raise bad_input(f"--node-rank: {node_rank} is not below --nnodes {nnodes}")
    if nproc_per_node != "auto" and not (nproc_per_node.isdigit() and int(nproc_per_node) > 0):
        raise bad_input(f"--nproc-per-node: expected a positive number or 'auto', got '{nproc_per_node}'")
    nproc = workers_per_node(job) if nproc_per_node == "auto" else int(nproc_per_node)
    port = master_port or (29500 if nnodes > 1 else None)
    topology = Topology(nproc, nnodes, node_rank, master_addr, port)
    folder = run_on_this_node(job, topology, run_dir, runs_dir, started=started)
    if folder is not None:
        _finish(folder)


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
