"""The local backend: train on this machine (CPU, MPS or CUDA), one worker in this process or
several DDP workers started by the launcher; with --detach, the same `gpujob run` in its own
session, which outlives the terminal (its output in job/output.log).

A live local run is the process that holds the run folder's lock (runner/runs/lock.py): that is
how `status` knows it runs and `cancel` knows whom to send SIGTERM, from any terminal.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

from runner.backends.base import Backend, Plan, Target
from runner.backends.detached import exit_code, start_detached, tail_lines
from runner.errors import bad_input
from runner.launching.command import run_command
from runner.runs import lock as run_lock
from runner.runs import record as run_record
from runner.runs.paths import JOB_OUTPUT, RunPaths
from runner.runs.state import RUNNING, Run, RunState, ended_state, resume_hint

START_WAIT_S = 60  # --detach: how long the new process may take to lock its folder


@dataclass(frozen=True)
class LocalRequest:
    """What runs here: `gpujob run` on the spec, into the run folder, with world_size workers;
    in its own session with --detach, in this process otherwise."""

    spec_file: str
    run_dir: str
    world_size: int
    resume: bool = False

    @property
    def command(self) -> list[str]:
        return run_command(self.spec_file, self.run_dir, self.world_size, resume=self.resume)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "LocalRequest":
        return cls(str(data["spec_file"]), str(data["run_dir"]), int(data["world_size"]), bool(data["resume"]))


class LocalBackend(Backend):
    name = "local"
    folder_is_here = True  # the job writes its run folder here: an unstarted one can go
    ships_code = False  # the job imports the code where it is
    resumes_here = True
    status_needs_no_service = True  # the lock and job/exit-code say it all
    request_type = LocalRequest
    stop_slack_s = 60  # past train.stop_grace_s (the launcher's grace for a checkpoint), then some

    def takes(self, spec, gpus_here: list[tuple[str, float]]) -> str | None:
        request = spec.resources.gpu_request
        if request is None:
            return "no GPU asked for: training here"
        matching = [name for name, memory in gpus_here if request.type.is_device(name, memory)]
        if len(matching) >= request.count:
            return f"this machine has {request} ({matching[0]})"
        return None

    def target(self, plan: Plan) -> Target:
        from runner.hardware import cuda_gpus, mps_available
        from runner.training.memory import available_ram

        request = plan.spec.resources.gpu_request
        gpus = cuda_gpus()
        if gpus:
            name, memory_gb = gpus[0]
            return Target("cuda", request.type if request else None, int(memory_gb * 1e9), f"this machine's {name}",
                          here=True)
        if mps_available():
            return Target("mps", None, available_ram(), "this Mac's GPU (shared memory)", here=True)
        return Target("cpu", None, available_ram(), "this machine", here=True)

    def plan(self, spec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        from runner.hardware import local_accelerator
        from runner.launching.launcher import workers_per_node

        if spec.resources.nodes > 1:
            raise bad_input(f"resources.nodes: backend local runs on this one machine; for {spec.resources.nodes} "
                            "use --backend slurm, or start `gpujob run --nnodes N --node-rank R` on each machine")
        workers = workers_per_node(spec)
        device = local_accelerator()
        paths = RunPaths((Path(runs_dir) / run_name).resolve())
        request = LocalRequest(str(paths.job_spec), str(paths.folder), workers)
        plan = Plan(self.name, spec, spec_path, runs_dir, run_name, workers, request,
                    rows=[("device here", device), ("detached command", " ".join(request.command))])
        if spec.resources.gpu and device == "cpu":
            plan.notes.append(f"no CUDA GPU here: resources.gpu {spec.resources.gpu} is ignored, running {workers} "
                              "CPU worker(s) (resources.processes)")
        return plan

    def send(self, run: Run, request: LocalRequest, detach: bool) -> None:
        """Detached: start the command in its own session and wait until it holds the run's lock
        (or has ended). Attached: run it in this process."""
        from runner.launching.launcher import run_on_this_node
        from runner.launching.topology import Topology
        from runner.spec.load import load_spec

        if detach:
            job_dir = RunPaths(run.folder).job
            pid = start_detached(request.command, job_dir)
            # the wrapper's identity, not its pid alone: `logs --follow` asks whether it still runs
            run.record = run_record.update(run.folder, handles=run_lock.identity(pid))
            deadline = time.monotonic() + START_WAIT_S
            while run_lock.holder(run.folder) is None and exit_code(job_dir) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        run.record = run_record.update(run.folder, handles={"pid": os.getpid(), "host": socket.gethostname()})
        # request.run_dir is this folder, resolved; its messages name it as the user did
        run_on_this_node(load_spec(request.spec_file), Topology(request.world_size), run.folder, run.folder.parent,
                         resume=request.resume)

    def refreshed(self, run: Run, request: LocalRequest) -> LocalRequest:
        return replace(request, resume=True)  # the folder holds the run: continue it

    def resume_with(self, run: Run, workers: int, detach: bool) -> None:
        """Continue `run` on this machine with `workers` workers, whichever backend ran it before
        (`gpujob resume RUN --here`, and every local run): from the spec the run wrote, which is
        this machine's view (a container's job/spec.yaml names its own paths)."""
        paths = RunPaths(run.folder.resolve())
        self.send(run, LocalRequest(str(paths.spec), str(paths.folder), workers, resume=True), detach)

    def status(self, run: Run) -> RunState:
        owner = run_lock.holder(run.folder)
        if owner is not None:
            return RunState(RUNNING, f"{run_lock.describe(owner)}")
        code = exit_code(RunPaths(run.folder).job)
        return ended_state(run, code, "" if code is not None else "the process is gone")

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        from runner.runs.lines import progress_lines

        output = RunPaths(run.folder).job / JOB_OUTPUT
        if output.exists():  # a detached run's whole output
            yield from tail_lines(output, (lambda: self._still_printing(run)) if follow else None)
            return
        # An attached run printed to its terminal; its metrics say the same, step by step.
        shown = 0
        while True:
            live = follow and self.status(run).live
            lines = progress_lines(run.folder)
            yield from lines[shown:]
            shown = len(lines)
            if not live:
                return
            time.sleep(0.5)

    def _still_printing(self, run: Run) -> bool:
        """A detached run goes on printing after it lets go of its folder's lock: `gpujob run`
        prints its result ("done: ...") then, and its wrapper writes job/exit-code last. So its
        output is followed while the lock is held, or while that wrapper runs without having
        written the exit code."""
        if self.status(run).live:
            return True
        return exit_code(RunPaths(run.folder).job) is None and run_lock.is_alive(run.record.handles)

    def cannot_stop(self, run: Run, state: RunState) -> str | None:
        owner = run_lock.holder(run.folder)
        if owner is not None and (owner.get("host") not in (None, socket.gethostname()) or not owner.get("pid")):
            return f"{run.folder} is running as {run_lock.describe(owner)}; cancel it there"
        return None

    def ask_to_stop(self, run: Run, state: RunState, grace_s: int) -> None:
        owner = run_lock.holder(run.folder)
        if owner is not None:
            _signal(owner["pid"], signal.SIGTERM)  # the job checkpoints at its next step and exits

    def end_now(self, run: Run, state: RunState, waited_s: float) -> str:
        owner = run_lock.holder(run.folder)
        if owner is not None:
            _signal(owner["pid"], signal.SIGKILL)
        return f"{run.folder.name} did not stop within {waited_s:.0f} s and was killed; {resume_hint(run.folder)}"

    def fetch(self, run: Run) -> str:
        return f"{run.folder.name} ran on this machine: its folder is already here"


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it ended meanwhile
