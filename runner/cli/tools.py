"""The commands around a job: `init` (a job of your own to start from), `check` (which backends
this machine can use now), `validate` and
`schema` (the spec), `image build` (the Docker image) and `export kaggle` (a kernel folder for a
service gpujob does not drive)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from runner.cli.app import SetOpt, SpecArg, app, load_job, user_errors


@app.command()
@user_errors
def init(name: str = typer.Argument(..., metavar="NAME", show_default=False,
                                    help="the job's name: NAME.yaml and NAME_job.py are written here")):
    """Write NAME.yaml and NAME_job.py here: a job with your own model, data and step to edit.

    As written it passes `gpujob submit NAME.yaml --dry-run` and trains offline in seconds.
    An existing file is never overwritten (exit 2)."""
    from runner.cli.skeleton import write_skeleton
    from runner.invocation import command

    for path in write_skeleton(name, Path.cwd()):
        typer.echo(f"wrote {path.name}")
    typer.echo(f"check it: {command(f'gpujob submit {name}.yaml --dry-run')}")
    typer.echo(f"run it:   {command(f'gpujob submit {name}.yaml')}")


@app.command()
@user_errors
def check():
    """Say which backends this machine can use now, and what each of the others lacks.

    One line per backend (SDK, credentials, engine, image, client commands), asked of this
    machine only: nothing is sent anywhere and nothing costs."""
    from runner.backends.registry import all_backends

    backends = all_backends()
    width = max(len(backend.name) for backend in backends)
    for backend in backends:
        lacking = backend.readiness()
        typer.echo(f"{backend.name:<{width}}  " + (f"not ready: {lacking}" if lacking else "ready"))


@app.command()
@user_errors
def validate(spec: Path = SpecArg, set_: Optional[List[str]] = SetOpt):
    """Check a spec and print it with every default filled in."""
    from runner.usercode.shipping import check_callables, find_user_code

    job = load_job(spec, set_)
    find_user_code(job, spec)  # each module found, and not too big to ship
    check_callables(job)
    typer.echo(job.to_yaml(), nl=False)


@app.command()
def schema():
    """Print the spec's JSON Schema (for editor completion)."""
    from runner.spec.load import json_schema

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
    sweep: bool = typer.Option(False, "--sweep", help="the kernel runs `gpujob sweep` on the spec's sweep: "
                               "section: every trial in turn, in one process"),
    notify: bool = typer.Option(False, "--notify", help="the kernel tells the webhooks in its Kaggle secret "
                                "GPUJOB_NOTIFY when the job starts and ends (as the spec's notify: does)"),
):
    """Write a Kaggle kernel folder that runs the job: `kaggle kernels push -p OUT`."""
    from runner.backends.kaggle.export import export_kernel

    from runner.usercode.shipping import find_user_code

    job = load_job(spec, set_)
    if sweep:  # the sweep's axes checked here, as `gpujob sweep` checks them, before anything is written
        import tempfile

        from runner.sweeps.driver import plan_sweep

        with tempfile.TemporaryDirectory() as nowhere:
            plan_sweep(job, spec, Path(nowhere), [], None, None)
    for line in export_kernel(job, out, kaggle_user, dataset or [], find_user_code(job, spec), sweep,
                              notify):
        typer.echo(line)
