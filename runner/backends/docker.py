"""The docker backend: run the job in gpujob's image on this machine.

The run folder is picked here, like a local run's, and the host's runs folder is mounted at
/runs, so the artifacts land straight in it; the container runs as the host user, so they are
the user's files. Inside, the same worker command as every backend:
`gpujob run /job/spec.yaml --run-dir /runs/NAME --nproc-per-node auto --resume`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from runner.backends import Plan
from runner.backends.exit_codes import remote_exit_error
from runner.errors import GpujobError, bad_input, job_failed
from runner.spec import JobSpec
from runner.stop_signals import INTERRUPTED

# Datasets that read data.root: the host folder is mounted at /data for them.
ROOT_DATASETS = ("fashion_mnist", "mnist", "cifar10")
STOP_GRACE_S = 30  # what `docker stop` gives the job to checkpoint before SIGKILL
TIMEOUT_GRACE_S = 120  # past resources.timeout_minutes: start-up, data download, the final save


@dataclass(frozen=True)
class ContainerRun:
    """Everything about one `docker run` except the run's name: what --dry-run shows."""

    image: str
    spec: JobSpec  # as the container sees it (data.root rewritten to the mount)
    gpus: str | None  # docker's --gpus value; None runs on the CPU
    mounts: list[tuple[Path, str, str]] = field(default_factory=list)  # host path, container path, ro|rw
    env: dict[str, str] = field(default_factory=dict)
    note: str | None = None


def _uses_factory(spec: JobSpec) -> bool:
    return ":" in spec.model.name or ":" in spec.data.dataset


def container_run(spec: JobSpec, runs_dir: Path, nvidia: bool, cwd: Path) -> ContainerRun:
    if spec.resources.nodes > 1:
        raise bad_input("resources.nodes: backend docker runs on this one machine; set nodes: 1")
    request = spec.resources.gpu_request
    wanted = spec.docker.gpus or (str(request.count) if request else "none")
    gpus, note = (wanted if wanted != "none" else None), None
    if gpus and not nvidia:
        gpus, note = None, (f"NVIDIA's container runtime is not installed here: running on the CPU "
                            f"({spec.resources.processes} worker(s), resources.processes)")
    if gpus and gpus.isdigit() and request is None:
        # `--gpu N` names no GPU type; on a CUDA machine `--nproc-per-node auto` then runs
        # resources.processes workers, so make that one per GPU.
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"processes": int(gpus)})})
    mounts = [(runs_dir.resolve(), "/runs", "rw")]
    env: dict[str, str] = {"HOME": "/tmp"}  # the host uid has no home in the image
    if spec.data.dataset in ROOT_DATASETS or ":" in spec.data.dataset:
        mounts.append(((cwd / spec.data.root).resolve(), "/data", "rw"))
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"root": "/data"})})
    if _uses_factory(spec):
        # A `package.module:factory` is the user's code: make this folder importable, read-only.
        mounts.append((cwd.resolve(), "/src", "ro"))
        env["PYTHONPATH"] = "/src"
    return ContainerRun(spec.docker.image, spec, gpus, mounts, env, note)


def docker_run_command(run: ContainerRun, run_name: str, job_dir: str, uid: int, gid: int) -> list[str]:
    command = ["docker", "run", "--rm", "--init", "--name", f"gpujob-{run_name}",
               "--user", f"{uid}:{gid}",
               # DataLoader workers and NCCL share tensors through /dev/shm; docker's default is 64 MB.
               "--ipc=host"]
    if run.gpus:
        command += ["--gpus", run.gpus]
    for host, inside, mode in [*run.mounts, (Path(job_dir), "/job", "ro")]:
        command += ["--volume", f"{host}:{inside}:{mode}"]
    for key, value in run.env.items():
        command += ["--env", f"{key}={value}"]
    return command + [run.image, "/job/spec.yaml", "--run-dir", f"/runs/{run_name}",
                      "--nproc-per-node", "auto", "--resume"]


class DockerBackend:
    name = "docker"

    def _container_run(self, spec: JobSpec, runs_dir: Path) -> ContainerRun:
        from runner.image import nvidia_runtime_available, require_engine, require_image

        require_engine()
        require_image(spec.docker.image)
        return container_run(spec, Path(runs_dir), nvidia_runtime_available(), Path.cwd())

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path) -> Plan:
        run = self._container_run(spec, runs_dir)
        request = spec.resources.gpu_request
        world = request.count if run.gpus and request else spec.resources.processes
        command = docker_run_command(run, f"{spec.name}-DATE-TIME", "<spec folder>", os.getuid(), os.getgid())
        details = {"image": run.image, "docker gpus": run.gpus or "none (cpu)",
                   "mounts": ", ".join(f"{host}:{inside}" for host, inside, _ in run.mounts),
                   "command": shlex.join(command)}
        if run.note:
            details["note"] = run.note
        return Plan(self.name, spec, spec_path, runs_dir, world_size=world, details=details)

    def run(self, plan: Plan) -> Path:
        from runner.run_folder import RunFolder

        run = self._container_run(plan.spec, plan.runs_dir)
        if run.note:
            print(f"gpujob: {run.note}", file=sys.stderr)
        for host, inside, mode in run.mounts:
            if mode == "rw":
                host.mkdir(parents=True, exist_ok=True)  # made by the user, not by docker as root
        folder = RunFolder.create(plan.runs_dir, plan.spec.name).path
        with tempfile.TemporaryDirectory(prefix="gpujob-docker-") as job_dir:
            Path(job_dir, "spec.yaml").write_text(run.spec.to_yaml())
            command = docker_run_command(run, folder.name, job_dir, os.getuid(), os.getgid())
            limit_s = plan.spec.resources.timeout_minutes * 60 + TIMEOUT_GRACE_S
            try:
                code, lines, timed_out = _run_streaming(command, f"gpujob-{folder.name}", limit_s)
            except KeyboardInterrupt:
                raise GpujobError(f"docker: interrupted; the job saved a checkpoint in {folder}; continue it "
                                  f"with: gpujob resume {folder}", INTERRUPTED) from None
        if timed_out:
            raise job_failed(f"docker: the job ran past resources.timeout_minutes "
                             f"({plan.spec.resources.timeout_minutes} min); the container was stopped; "
                             f"its last checkpoint is in {folder}")
        if code == 125:  # docker's own failure: the container never started
            raise job_failed(f"docker: the container did not start: {lines[-1] if lines else 'no output'}")
        error = remote_exit_error(code, lines, "docker", folder)
        if error is not None:
            raise error
        return folder


def _run_streaming(command: list[str], container: str, limit_s: float) -> tuple[int, list[str], bool]:
    """Run `docker run`, echoing its output; stop the container past `limit_s` or on Ctrl-C.
    Returns the exit code, the last lines of output and whether the time limit stopped it."""
    tail: deque[str] = deque(maxlen=200)
    # Its own session: Ctrl-C reaches only gpujob, which stops the container with a grace period.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def stop_for_time() -> None:
        timed_out.set()
        _stop(container)

    timer = threading.Timer(limit_s, stop_for_time)
    timer.daemon = True
    timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    except KeyboardInterrupt:
        print(f"\ngpujob: stopping container {container} (it saves a checkpoint first)", file=sys.stderr)
        _stop(container)
        proc.wait()
        raise
    finally:
        timer.cancel()
    return code, list(tail), timed_out.is_set()


def _stop(container: str) -> None:
    # Not checked: the container may have exited (and been removed) in the meantime.
    subprocess.run(["docker", "stop", "--time", str(STOP_GRACE_S), container],
                   capture_output=True, text=True, timeout=STOP_GRACE_S + 60)


BACKEND = DockerBackend()
