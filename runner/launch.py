"""Start the DDP workers of one job on this machine, watch them, and stop them together.

Each worker is `python -m runner.cli run SPEC --run-dir DIR --worker` with torchrun's
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so the user never
types torchrun. The launcher owns the failure story: if one rank fails, the others are
stopped within seconds and that rank's error is shown; past `resources.timeout_minutes`
everything is stopped; SIGTERM/SIGINT are forwarded so workers can checkpoint and exit;
and each worker dies with the launcher (PR_SET_PDEATHSIG), so none is ever left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import BAD_INPUT, JOB_FAILED, GpujobError, last_error_line
from runner.run_lock import INHERITED
from runner.spec import JobSpec
from runner.stop_signals import INTERRUPTED, PREEMPTED

STOP_GRACE_S = 30.0  # how long a stopped worker may take to checkpoint before SIGKILL
# Errors a rank raises because *another* rank died or hung: reported only if nothing better is found.
SECONDARY = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out",
             "Broken pipe", "NCCL communicator was aborted", "recvBytes", "SIGTERM")


@dataclass(frozen=True)
class Topology:
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # a free port is picked on a single node

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failed_ranks(codes: dict[int, int | None], lines: dict[int, list[str]]) -> list[int]:
    """The ranks that failed, the one whose failure ended the job first: a rank failed by its
    exit code, or by printing its own error before it was stopped; ranks that only lost their
    peers (SECONDARY errors) come after the others."""

    def own_error(rank: int) -> bool:  # not the line a rank stopped by a signal prints
        return any(line.startswith("gpujob: ") and "by signal" not in line for line in lines.get(rank, []))

    stopped = (0, None, PREEMPTED, INTERRUPTED, -signal.SIGTERM, -signal.SIGKILL)
    failed = [r for r, c in sorted(codes.items()) if c not in stopped or (c != 0 and own_error(r))]
    secondary = [r for r in failed if any(s in last_error_line(lines.get(r, [])) for s in SECONDARY)]
    return [r for r in failed if r not in secondary] + secondary


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the launcher dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Launch:
    def __init__(self, spec: JobSpec, topology: Topology, run_dir: Path | None, resume: bool = False):
        self.spec, self.topology, self.run_dir, self.resume = spec, topology, run_dir, resume
        self.scratch = Path(tempfile.mkdtemp(prefix="gpujob-launch-"))
        self.procs: list[subprocess.Popen] = []
        self.stop_signal: int | None = None

    def _worker_env(self, local_rank: int, port: int) -> dict:
        t = self.topology
        env = dict(os.environ)
        env.update(RANK=str(t.node_rank * t.nproc_per_node + local_rank), LOCAL_RANK=str(local_rank),
                   WORLD_SIZE=str(t.world_size), LOCAL_WORLD_SIZE=str(t.nproc_per_node),
                   GROUP_RANK=str(t.node_rank), MASTER_ADDR=t.master_addr, MASTER_PORT=str(port),
                   PYTHONUNBUFFERED="1")
        if self.run_dir is not None:  # node 0: the workers run under this launcher's lock on the folder
            env[INHERITED] = str(Path(self.run_dir).resolve())
        # Workers on one CPU share its cores; oversubscribed OpenMP threads slow every rank down.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // t.nproc_per_node)))
        return env

    def start(self) -> None:
        spec_file = self.scratch / "spec.yaml"
        spec_file.write_text(self.spec.to_yaml())
        port = self.topology.master_port or free_port()
        for local_rank in range(self.topology.nproc_per_node):
            log = open(self.scratch / f"rank-{local_rank}.log", "w")
            rank = self.topology.node_rank * self.topology.nproc_per_node + local_rank
            command = [sys.executable, "-m", "runner.cli", "run", str(spec_file), "--worker"]
            if self.run_dir is not None:
                command += ["--run-dir", str(self.run_dir)]
            if self.resume:
                command += ["--resume"]
            self.procs.append(subprocess.Popen(
                command, env=self._worker_env(local_rank, port), stdin=subprocess.DEVNULL,
                stdout=None if rank == 0 else log, stderr=log,  # rank 0's progress reaches the user
                start_new_session=True, preexec_fn=_die_with_parent))

    def _signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)  # the worker and its DataLoader processes
                except ProcessLookupError:
                    pass

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def watch(self, timeout_s: float) -> None:
        """Wait for every worker; raise a GpujobError for the first real failure."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stop_signal is not None:
                self.stop_all()
                code = PREEMPTED if self.stop_signal == signal.SIGTERM else INTERRUPTED
                raise self._stopped(signal.Signals(self.stop_signal).name, code)
            codes = [p.poll() for p in self.procs]
            if codes and all(c == PREEMPTED for c in codes):  # SIGTERM reached the workers directly
                raise self._stopped("SIGTERM", PREEMPTED)
            if any(c not in (None, 0, PREEMPTED) for c in codes):
                # The failing rank's peers notice its closed connections and fail at once, often
                # before it has finished exiting: give every rank a moment to end on its own.
                settle = time.monotonic() + 3.0
                while any(p.poll() is None for p in self.procs) and time.monotonic() < settle:
                    time.sleep(0.05)
                self.stop_all(grace_s=5.0)
                raise self._failure([p.returncode for p in self.procs])
            if all(c == 0 for c in codes):
                return
            if time.monotonic() > deadline:
                self.stop_all(grace_s=5.0)
                raise GpujobError(f"job timed out after {timeout_s / 60:g} min (resources.timeout_minutes); "
                                  "all workers were stopped", JOB_FAILED)
            time.sleep(0.1)

    def _stopped(self, name: str, code: int) -> GpujobError:
        resume = f"; resume with: gpujob resume {self.run_dir}" if self.run_dir else ""
        return GpujobError(f"stopped by {name}: the workers checkpointed and exited{resume}", code)

    def _failure(self, codes: list[int]) -> GpujobError:
        lines = {r: (self.scratch / f"rank-{r}.log").read_text(errors="replace").splitlines()
                 for r in range(len(codes))}
        failed = failed_ranks(dict(enumerate(codes)), lines)
        local_rank = failed[0] if failed else 0
        rank = self.topology.node_rank * self.topology.nproc_per_node + local_rank
        code = codes[local_rank] if codes[local_rank] in (1, 2, 3) else JOB_FAILED
        report = last_error_line(lines[local_rank]) or f"exit code {codes[local_rank]}"
        if code == BAD_INPUT:  # the spec's fault, said in one line; the run folder is taken back
            return GpujobError(report, code)
        self._keep_logs(failed)
        where = f" (log: {self.run_dir / f'rank-{rank}.log'})" if self.run_dir else ""
        return GpujobError(f"rank {rank} of {self.topology.world_size} failed: {report}"
                           f"{where}; the other workers were stopped", code)

    def _keep_logs(self, local_ranks: list[int]) -> None:
        if self.run_dir is None or not self.run_dir.exists():
            return
        for local_rank in local_ranks:
            rank = self.topology.node_rank * self.topology.nproc_per_node + local_rank
            shutil.copyfile(self.scratch / f"rank-{local_rank}.log", self.run_dir / f"rank-{rank}.log")

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def launch(spec: JobSpec, topology: Topology, run_dir: Path | None, resume: bool = False) -> None:
    """Run one node's workers to the end. Raises GpujobError on failure, timeout or signal."""
    job = Launch(spec, topology, run_dir, resume)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, _frame):
        job.stop_signal = signum

    for signum in previous:
        signal.signal(signum, on_signal)
    try:
        job.start()
        job.watch(spec.resources.timeout_minutes * 60)
    finally:
        if any(p.poll() is None for p in job.procs):
            job.stop_all(grace_s=5.0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        job.cleanup()


def run_on_this_node(spec: JobSpec, topology: Topology, run_dir: Path | None, runs_dir: Path,
                     started: float | None = None, resume: bool = False) -> Path | None:
    """One worker in this process, or several through the launcher. Returns the run
    folder on the node that holds rank 0, None on the others. With `resume`, a run_dir
    holding a run continues from its last checkpoint (and a finished one is left as is).
    Node 0 opens and locks the run folder before anything else (torch is not even imported)."""
    from runner.run_lock import release
    from runner.worker import open_run_folder

    opened = open_run_folder(spec, run_dir, runs_dir, resume) if topology.node_rank == 0 else None
    try:
        return _run_opened(spec, topology, opened, runs_dir, started, resume)
    finally:
        if opened:
            release(opened[0].path)


def _run_opened(spec, topology, opened, runs_dir, started, resume) -> Path | None:
    from runner.worker import run_worker

    folder = opened[0] if opened else None
    if opened and opened[1] and folder.finished:
        print(f"gpujob: {folder.path} already finished; nothing to resume", file=sys.stderr)
        return folder.path
    if topology.world_size == 1:
        return run_worker(spec, runs_dir=runs_dir, started=started, resume=resume, opened=opened)
    try:
        launch(spec, topology, folder.path if folder else None, resume=resume)
    except GpujobError as err:
        if err.exit_code == 2 and folder is not None and not opened[1]:
            folder.discard()  # bad input found by the workers: leave nothing half-made
        raise
    return folder.path if folder else None


def workers_per_node(spec: JobSpec) -> int:
    """World size on one node: the spec's GPU count on a CUDA machine, else resources.processes."""
    from runner.errors import bad_input
    from runner.hardware import cuda_gpus

    request = spec.resources.gpu_request
    visible = len(cuda_gpus())
    if visible and request:
        if request.count > visible:
            raise bad_input(f"resources.gpu: asks for {request.count} GPUs per node; this machine has {visible}")
        return request.count
    return spec.resources.processes
