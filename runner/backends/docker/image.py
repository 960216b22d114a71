"""gpujob's Docker image: build it, push it, and ask the local engine about it.

Shells out to the docker CLI rather than talking to the engine's API: BuildKit, registry
logins, contexts and proxy settings are then exactly the user's own. The Dockerfile and
images/ live in a gpujob checkout (PROJECT_ROOT), which is also the build context.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from runner.errors import GpujobError, bad_input, job_failed, missing_backend
from runner.invocation import command

DEFAULT_TAG = "gpujob:latest"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
NO_ENGINE = ("docker: no Docker engine answers here; start Docker (sudo systemctl start docker) "
             "or make sure you may use it (the docker group), then try again")


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def require_engine() -> None:
    """Exit 3 with one line unless the docker CLI is installed and an engine answers it."""
    if shutil.which("docker") is None:
        raise missing_backend("docker: the docker command is not installed; install Docker Engine "
                              "(https://docs.docker.com/engine/install/)")
    try:
        answered = _docker("info", "--format", "{{.ServerVersion}}").returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    if not answered:
        raise missing_backend(NO_ENGINE)


def engine_available() -> bool:
    try:
        require_engine()
    except GpujobError:
        return False
    return True


def image_exists(tag: str) -> bool:
    return _docker("image", "inspect", "--format", "{{.Id}}", tag).returncode == 0


def require_image(tag: str) -> None:
    if not image_exists(tag):
        raise missing_backend(f"docker: image {tag} is not here; build it with: "
                              f"{command(f'gpujob image build --tag {tag}')}")


def nvidia_runtime_available() -> bool:
    """Whether `docker run --gpus` can work here: NVIDIA's container runtime is registered with
    the engine, or its hook (what `--gpus` calls) is installed."""
    runtimes = _docker("info", "--format", "{{json .Runtimes}}")
    if runtimes.returncode == 0 and "nvidia" in runtimes.stdout:
        return True
    return any(shutil.which(tool) for tool in ("nvidia-container-runtime-hook", "nvidia-container-cli"))


def build_command(tag: str, base_image: str | None = None, extra_ca: Path | None = None,
                  context: Path = PROJECT_ROOT) -> list[str]:
    command = ["docker", "build", "--tag", tag, "--build-arg", f"GPUJOB_IMAGE={tag}"]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if extra_ca:
        # A build secret, not a build argument: arguments are recorded in the image's history.
        command += ["--secret", f"id=extra_ca,src={extra_ca}"]
    return command + ["--file", str(context / "Dockerfile"), str(context)]


def build_image(tag: str = DEFAULT_TAG, base_image: str | None = None, extra_ca: Path | None = None,
                push: bool = False, context: Path = PROJECT_ROOT) -> None:
    """`docker build` the project's image, streaming its output; then `docker push` it if asked."""
    if not (context / "Dockerfile").is_file():
        raise bad_input(f"gpujob image build: no Dockerfile in {context}; run it from a gpujob checkout")
    if extra_ca is not None and not Path(extra_ca).is_file():
        raise bad_input(f"--extra-ca: {extra_ca} is not a file")
    if push:
        check_pushable(tag)  # before a build of minutes, not after it
    require_engine()
    command = build_command(tag, base_image, Path(extra_ca).resolve() if extra_ca else None, context)
    # The Dockerfile's cache and secret mounts need BuildKit, which older engines leave off.
    code = subprocess.run(command, env={**os.environ, "DOCKER_BUILDKIT": "1"}).returncode
    if code != 0:
        raise job_failed(f"docker build failed (exit {code}); its output is above")
    if push:
        push_image(tag)


def check_pushable(tag: str) -> None:
    if "/" not in tag:
        raise bad_input(f"--push: {tag} names no registry or account; tag it like "
                        "docker.io/YOU/gpujob:1 or ghcr.io/YOU/gpujob:1 (and `docker login` there first)")


def push_image(tag: str) -> None:
    check_pushable(tag)
    code = subprocess.run(["docker", "push", tag]).returncode
    if code != 0:
        raise job_failed(f"docker push {tag} failed (exit {code}); are you logged in (docker login)?")
