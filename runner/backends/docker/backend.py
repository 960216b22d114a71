"""The docker backend: run the job in gpujob's image on this machine.

The run folder is picked here, like a local run's, and the host's runs folder is mounted at
/runs, so the artifacts land straight in it; the container runs as the host user, so they are
the user's files. Inside, the same worker command as every backend (runner/launching/command.py)
after the image's entrypoint `gpujob run`:
`gpujob run /job/spec.yaml --run-dir /runs/NAME --nproc-per-node auto --resume`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from runner.backends.base import Backend, Plan, Target, stop_grace_s
from runner.backends.detached import exit_code, start_detached, tail_lines
from runner.backends.exit_codes import remote_exit_error
from runner.errors import INTERRUPTED, GpujobError, bad_input, job_failed
from runner.invocation import command
from runner.reports.notify import NOTIFY_ENV
from runner.launching.command import run_arguments
from runner.runs import lock as run_lock
from runner.runs import record as run_record
from runner.runs.paths import JOB_EXIT_CODE, JOB_OUTPUT, JOB_SPEC, RunPaths
from runner.runs.state import PENDING, RUNNING, Run, RunState, ended_state
from runner.spec.model import JobSpec
from runner.usercode.shipping import CODE_DIR, SHIPPED_CODE, code_fields

# Datasets that read data.root: the host folder is mounted at /data for them.
ROOT_DATASETS = ("fashion_mnist", "mnist", "cifar10")
TIMEOUT_GRACE_S = 120  # past resources.timeout_minutes: start-up, data download, the final save
JOB_MOUNT = "/job"  # the run's job/ as the container sees it (read-only)
RUNS_MOUNT = "/runs"


@dataclass(frozen=True)
class ContainerRun:
    """Everything about one `docker run` except the run's name: what --dry-run shows."""

    image: str
    spec: JobSpec  # as the container sees it (data.root rewritten to the mount)
    gpus: str | None  # docker's --gpus value; None runs on the CPU
    mounts: list[tuple[Path, str, str]] = field(default_factory=list)  # host path, container path, ro|rw
    env: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    # names only: `--env NAME` hands the container the value `docker run` has, kept out of the request
    passed_env: tuple[str, ...] = ()



def container_run(spec: JobSpec, runs_dir: Path, nvidia: bool, cwd: Path) -> ContainerRun:
    if spec.resources.nodes > 1:
        raise bad_input("resources.nodes: backend docker runs on this one machine; set nodes: 1")
    request = spec.resources.gpu_request
    if request is not None and not request.runs_the_image():
        raise bad_input(request.image_refusal())
    wanted = spec.docker.gpus or (str(request.count) if request else "none")
    gpus, note = (wanted if wanted != "none" else None), None
    if gpus and not nvidia:
        gpus, note = None, (f"NVIDIA's container runtime is not installed here: running on the CPU "
                            f"({spec.resources.processes} worker(s), resources.processes)")
    if gpus and gpus.isdigit() and request is None:
        # `--gpu N` names no GPU type; on a CUDA machine `--nproc-per-node auto` then runs
        # resources.processes workers, so make that one per GPU.
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"processes": int(gpus)})})
    mounts = [(runs_dir.resolve(), RUNS_MOUNT, "rw")]
    # The host uid has no home in the image; the gpujob outside reports the run (its own path for it).
    env: dict[str, str] = {"HOME": "/tmp", "GPUJOB_INNER_RUN": "1"}
    if spec.data.dataset in ROOT_DATASETS or ":" in spec.data.dataset:
        mounts.append(((cwd / spec.data.root).resolve(), "/data", "rw"))
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"root": "/data"})})
    if code_fields(spec):
        # The user's code, as submitted: the run's job/code, which the container sees at /job/code.
        env[SHIPPED_CODE] = f"{JOB_MOUNT}/{CODE_DIR}"
    passed = (NOTIFY_ENV,) if os.environ.get(NOTIFY_ENV) else ()  # webhooks are credentials
    return ContainerRun(spec.docker.image, spec, gpus, mounts, env, note, passed)


def docker_run_command(run: ContainerRun, run_name: str, job_dir: str, uid: int, gid: int) -> list[str]:
    command = ["docker", "run", "--rm", "--init", "--name", f"gpujob-{run_name}",
               "--user", f"{uid}:{gid}",
               # DataLoader workers and NCCL share tensors through /dev/shm; docker's default is 64 MB.
               "--ipc=host"]
    if run.gpus:
        command += ["--gpus", run.gpus]
    for host, inside, mode in [*run.mounts, (Path(job_dir), JOB_MOUNT, "ro")]:
        command += ["--volume", f"{host}:{inside}:{mode}"]
    for key, value in run.env.items():
        command += ["--env", f"{key}={value}"]
    for key in run.passed_env:
        command += ["--env", key]
    # `--resume` every time: a resume sends this very command again, and the folder then holds the run
    return command + [run.image, *run_arguments(f"{JOB_MOUNT}/{JOB_SPEC}", f"{RUNS_MOUNT}/{run_name}", "auto",
                                                resume=True)]


@dataclass(frozen=True)
class DockerRequest:
    """The `docker run` that starts the job: sent as it is, kept in job/request.json, and sent
    again as it is by `gpujob resume` (its worker runs with --resume)."""

    container: str
    argv: list[str]
    limit_s: float  # attached: past this, the container is stopped
    host_dirs: list[str]  # mounted read-write: made by the user before docker would make them as root

    @property
    def gpus(self) -> str | None:
        """docker's --gpus value, None on the CPU."""
        return self.argv[self.argv.index("--gpus") + 1] if "--gpus" in self.argv else None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "DockerRequest":
        return cls(str(data["container"]), [str(arg) for arg in data["argv"]], float(data["limit_s"]),
                   [str(path) for path in data["host_dirs"]])


class DockerBackend(Backend):
    name = "docker"
    folder_is_here = True  # the job writes its run folder here: an unstarted one can go
    ships_code = True  # a copy in the run's job/code, which the job imports
    takes_machine_gpus = True  # `--gpu all` or a count: this machine's GPUs, given to the container
    request_type = DockerRequest

    def target(self, plan: Plan) -> Target:
        from runner.hardware import cuda_gpus
        from runner.training.memory import available_ram

        request = plan.spec.resources.gpu_request
        assert isinstance(plan.request, DockerRequest), "plan() makes it"
        gpus = cuda_gpus() if plan.request.gpus else []
        if gpus:
            name, memory_gb = gpus[0]
            return Target("cuda", request.type if request else None, int(memory_gb * 1e9), f"this machine's {name}",
                          here=True)
        return Target("cpu", None, available_ram(), "this machine", here=True)

    def readiness(self) -> str | None:
        """The engine (asked over its local socket) and the image a spec runs by default."""
        from runner.backends.docker.image import require_engine, require_image
        from runner.spec.model import DockerSpec

        try:
            require_engine()
            require_image(DockerSpec().image)
        except GpujobError as err:
            return err.message.removeprefix("docker: ")
        return None

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        from runner.backends.docker.image import nvidia_runtime_available, require_engine, require_image

        require_engine()
        require_image(spec.docker.image)
        run = container_run(spec, Path(runs_dir), nvidia_runtime_available(), Path.cwd())
        request = spec.resources.gpu_request
        world = request.count if run.gpus and request else run.spec.resources.processes
        job_dir = RunPaths((Path(runs_dir) / run_name).resolve()).job
        argv = docker_run_command(run, run_name, str(job_dir), os.getuid(), os.getgid())
        limit_s = spec.resources.timeout_minutes * 60 + TIMEOUT_GRACE_S
        host_dirs = [str(host) for host, _, mode in run.mounts if mode == "rw"]
        plan = Plan(self.name, spec, spec_path, runs_dir, run_name, world,
                    DockerRequest(f"gpujob-{run_name}", argv, limit_s, host_dirs),
                    rows=[("image", run.image), ("docker gpus", run.gpus or "none (cpu)"),
                          ("mounts", ", ".join(f"{host}:{inside}" for host, inside, _ in run.mounts)),
                          ("command", shlex.join(argv))],
                    job_spec=run.spec)  # what the container reads at /job/spec.yaml
        if run.note:
            plan.notes.append(run.note)
        return plan

    def send(self, run: Run, request: DockerRequest, detach: bool) -> None:
        """`docker run`: detached, in its own session; attached, followed to its end here."""
        from runner.backends.docker.image import require_engine

        require_engine()
        for host in request.host_dirs:
            Path(host).mkdir(parents=True, exist_ok=True)
        job_dir = RunPaths(run.folder).job
        if detach:
            pid = start_detached(request.argv, job_dir)
            run.record = run_record.update(run.folder, handles={"container": request.container, "client_pid": pid})
            return
        run.record = run_record.update(run.folder, handles={"container": request.container})
        (job_dir / JOB_EXIT_CODE).unlink(missing_ok=True)
        try:
            code, lines, timed_out = _run_streaming(request.argv, request.container, request.limit_s,
                                                    job_dir / JOB_OUTPUT, stop_grace_s(run.folder), run.folder)
        except KeyboardInterrupt:
            (job_dir / JOB_EXIT_CODE).write_text(f"{INTERRUPTED}\n")
            raise GpujobError(f"docker: interrupted; the job saved a checkpoint in {run.folder}; continue it "
                              f"with: {command(f'gpujob resume {run.folder}')}", INTERRUPTED) from None
        (job_dir / JOB_EXIT_CODE).write_text(f"{code}\n")
        _raise_for_outcome(code, lines, timed_out, request.limit_s, run.folder)

    def status(self, run: Run) -> RunState:
        owner = run_lock.holder(run.folder)
        if owner is not None:
            return RunState(RUNNING, f"in container {run.handles.get('container')}")
        state, code = container_state(run.handles.get("container"))
        if state in ("running", "restarting", "paused"):
            return RunState(RUNNING, f"container {run.handles['container']} is {state}")
        if state == "created":
            return RunState(PENDING, f"container {run.handles['container']} is being created")
        known = exit_code(RunPaths(run.folder).job)
        code = known if known is not None else code
        return ended_state(run, code, "" if code is not None else "the container is gone")

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        yield from tail_lines(RunPaths(run.folder).job / JOB_OUTPUT,
                              (lambda: self.status(run).live) if follow else None)

    def ask_to_stop(self, run: Run, state: RunState, grace_s: int) -> None:
        _stop(run.handles["container"], grace_s)  # SIGTERM: the job checkpoints, then the container exits

    def fetch(self, run: Run) -> str:
        return f"{run.folder.name} ran in a container on this machine: its folder is already here"


def _raise_for_outcome(code: int, lines: list[str], timed_out: bool, limit_s: float, folder: Path) -> None:
    """The error an attached `docker run` ending with `code` is, if any."""
    if timed_out:
        raise job_failed(f"docker: the job ran past resources.timeout_minutes "
                         f"({limit_s / 60 - TIMEOUT_GRACE_S / 60:g} min); the container was stopped; "
                         f"its last checkpoint is in {folder}")
    if code == 125:  # docker's own failure: the container never started
        raise job_failed(f"docker: the container did not start: {lines[-1] if lines else 'no output'}")
    error = remote_exit_error(code, lines, "docker", folder)
    if error is not None:
        raise error


def container_state(container: str | None) -> tuple[str | None, int | None]:
    """(docker's state, exit code) of a container; (None, None) once it is gone (--rm)."""
    from runner.backends.docker.image import require_engine

    if not container:
        return None, None
    require_engine()
    out = subprocess.run(["docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None, None
    state, code = out.stdout.split()
    return state, int(code)


def _run_streaming(command: list[str], container: str, limit_s: float, log: Path,
                   grace_s: int, folder: Path) -> tuple[int, list[str], bool]:
    """Run `docker run`, echoing its output (with the run `folder` as it is named here) and
    keeping it as it is in `log`; stop the container past `limit_s` or on Ctrl-C. Returns the
    exit code, the last lines of output and whether the time limit stopped it."""
    tail: deque[str] = deque(maxlen=200)
    # Its own session: Ctrl-C reaches only gpujob, which stops the container with a grace period.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    assert proc.stdout is not None, "stdout=PIPE"
    timed_out = threading.Event()

    def stop_for_time() -> None:
        timed_out.set()
        _stop(container, grace_s)

    timer = threading.Timer(limit_s, stop_for_time)
    timer.daemon = True
    timer.start()
    try:
        with open(log, "a") as kept:
            for line in proc.stdout:
                kept.write(line)
                kept.flush()
                line = _as_on_this_machine(line, folder)
                sys.stdout.write(line)
                sys.stdout.flush()
                tail.append(line.rstrip("\n"))
        code = proc.wait()
    except KeyboardInterrupt:
        print(f"\ngpujob: stopping container {container} (it saves a checkpoint first)", file=sys.stderr)
        _stop(container, grace_s)
        proc.wait()
        raise
    finally:
        timer.cancel()
    return code, list(tail), timed_out.is_set()


def _as_on_this_machine(line: str, folder: Path) -> str:
    """A line of the container's output with the run folder's name there (/runs/NAME, in the
    worker's `resume with: gpujob resume /runs/NAME`) replaced by its name here."""
    inside = f"{RUNS_MOUNT}/{folder.name}"
    if inside not in line:
        return line
    return re.sub(rf"(?<![\w./-]){re.escape(inside)}(?![\w.-])", lambda _: str(folder), line)


def _stop(container: str, grace_s: int) -> None:
    """`docker stop`: SIGTERM, then SIGKILL after `grace_s` (train.stop_grace_s). Not checked: the
    container may have exited (and been removed) in the meantime."""
    subprocess.run(["docker", "stop", "--time", str(grace_s), container],
                   capture_output=True, text=True, timeout=grace_s + 60)
