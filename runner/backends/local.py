"""The local backend: train on this machine (CPU, MPS or CUDA), one worker in this process or
several DDP workers started by the launcher; with --detach, the same `gpujob run` in its own
session, which outlives the terminal (its output in job/output.log).

A live local run is the process that holds the run folder's lock (runner/run_lock.py): that is
how `status` knows it runs and `cancel` knows whom to send SIGTERM, from any terminal.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner.runs import lock as run_lock

from runner.runs import record as run_record
from runner.runs.state import RUNNING, Run, RunState
from runner.backends.base import Backend, Plan, Target
from runner.runs.paths import RunPaths
from runner.backends.detached import OUTPUT, exit_code, start_detached, tail_lines
from runner.errors import bad_input
from runner.runs.paths import JOB

STOP_WAIT_S = 60  # cancel: past train.stop_grace_s (the launcher's grace for a checkpoint), then some
START_WAIT_S = 60  # --detach: how long the new process may take to lock its folder


@dataclass(frozen=True)
class LocalRequest:
    """What runs here: `command` in its own session with --detach, the same in this process
    otherwise (`gpujob run` is this process's own command)."""

    world_size: int
    command: list[str]


def worker_command(spec_file: Path, run_dir: Path, world_size: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "runner.cli", "run", str(spec_file), "--run-dir", str(run_dir),
            "--nproc-per-node", str(world_size), *(["--resume"] if resume else [])]


class LocalBackend(Backend):
    name = "local"
    folder_is_here = True  # the job writes its run folder here: an unstarted one can go
    ships_code = False  # the job imports the code where it is
    resumes_here = True
    status_needs_no_service = True  # the lock and job/exit-code say it all

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
        folder = (Path(runs_dir) / run_name).resolve()
        command = worker_command(folder / JOB / "spec.yaml", folder, workers, resume=False)
        plan = Plan(self.name, spec, spec_path, runs_dir, run_name, workers, LocalRequest(workers, command),
                    rows=[("device here", device), ("detached command", " ".join(command))])
        if spec.resources.gpu and device == "cpu":
            plan.notes.append(f"no CUDA GPU here: resources.gpu {spec.resources.gpu} is ignored, running {workers} "
                              "CPU worker(s) (resources.processes)")
        return plan

    def submit(self, plan: Plan, run: Run, detach: bool) -> None:
        from runner.launching.topology import Topology
        from runner.launching.launcher import run_on_this_node

        for note in plan.notes:
            print(f"gpujob: {note}", file=sys.stderr)
        spec_file = run.folder / JOB / "spec.yaml"
        spec_file.parent.mkdir(exist_ok=True)
        spec_file.write_text(plan.spec.to_yaml())
        if detach:
            self._start(run, plan.request.command)
            return
        run.record = run_record.update(run.folder, handles={"pid": os.getpid(), "host": socket.gethostname()})
        run_on_this_node(plan.spec, Topology(plan.world_size), run.folder, plan.runs_dir)

    def _start(self, run: Run, command: list[str]) -> None:
        """Start `command` detached and wait until it holds the run's lock (or has ended)."""
        job_dir = run.folder / JOB
        pid = start_detached(command, job_dir)
        run.record = run_record.update(run.folder, handles={"pid": pid, "host": socket.gethostname()})
        deadline = time.monotonic() + START_WAIT_S
        while run_lock.holder(run.folder) is None and exit_code(job_dir) is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def status(self, run: Run) -> RunState:
        from runner.runs.state import ended_state

        owner = run_lock.holder(run.folder)
        if owner is not None:
            return RunState(RUNNING, f"{run_lock.describe(owner)}")
        code = exit_code(run.folder / JOB)
        return ended_state(run, code, "" if code is not None else "the process is gone")

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        from runner.runs.lines import progress_lines

        output = run.folder / JOB / OUTPUT
        if output.exists():  # a detached run's whole output
            yield from tail_lines(output, (lambda: self.status(run).live) if follow else None)
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

    def cancel(self, run: Run) -> str:
        from runner.runs.state import resume_hint

        owner = run_lock.holder(run.folder)
        if owner is None:
            return f"{run.folder.name} is not running ({self.status(run).describe()}); nothing to cancel"
        if owner.get("host") not in (None, socket.gethostname()) or not owner.get("pid"):
            raise bad_input(f"{run.folder} is running as {run_lock.describe(owner)}; cancel it there")
        run.record.note("cancel asked")
        run_record.write(run.folder, run.record)
        try:
            os.kill(owner["pid"], signal.SIGTERM)  # the job checkpoints at its next step and exits
        except ProcessLookupError:
            pass
        from runner.spec.load import load_spec

        deadline = time.monotonic() + load_spec(run.folder / "spec.yaml").train.stop_grace_s + STOP_WAIT_S
        while run_lock.holder(run.folder) is not None:
            if time.monotonic() > deadline:
                os.kill(owner["pid"], signal.SIGKILL)
                return (f"{run.folder.name} did not stop within {STOP_WAIT_S} s and was killed; "
                        f"{resume_hint(run.folder)}")
            time.sleep(0.1)
        return f"cancelled {run.folder.name}; {resume_hint(run.folder)}"

    def fetch(self, run: Run) -> str:
        return f"{run.folder.name} ran on this machine: its folder is already here"

    def resume(self, run: Run, detach: bool) -> None:
        from runner.launching.launcher import workers_per_node
        from runner.spec.load import load_spec

        self.resume_with(run, workers_per_node(load_spec(RunPaths(run.folder).spec)), detach)

    def resume_with(self, run: Run, workers: int, detach: bool) -> None:
        """Continue `run` on this machine with `workers` workers, whichever backend ran it before
        (`gpujob resume RUN --here`, and every local run)."""
        from runner.launching.launcher import run_on_this_node
        from runner.launching.topology import Topology
        from runner.spec.load import load_spec

        spec_file = RunPaths(run.folder).spec
        if detach:
            self._start(run, worker_command(spec_file.resolve(), run.folder.resolve(), workers, resume=True))
            return
        run.record = run_record.update(run.folder, handles={"pid": os.getpid(), "host": socket.gethostname()})
        run_on_this_node(load_spec(spec_file), Topology(workers), run.folder, run.folder.parent, resume=True)



