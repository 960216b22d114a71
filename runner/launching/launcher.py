"""Start the DDP workers of one job on this machine, watch them, and stop them together.

Each worker is `python -m runner.cli run SPEC --run-dir DIR --worker` with torchrun's
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so the user never
types torchrun. The launcher owns the failure story: if one rank fails, the others are
stopped within seconds and that rank's error is shown; past `resources.timeout_minutes`
everything is stopped; SIGTERM/SIGINT are forwarded so workers can checkpoint and exit;
and each worker dies with the launcher (PR_SET_PDEATHSIG), so none is ever left behind.
Across machines each node runs its own launcher; nodes that never meet (one that never comes,
a wrong --master-addr) end within train.collective_timeout_s, each saying so in one line.

Which rank to blame is decided from facts (runner/launching/blame.py): each worker's exit status
and when it was seen, whether this launcher had signalled it, and the error record a failing
worker writes into an unlinked file this launcher hands it (GPUJOB_ERROR_FILE): when it failed,
its exception's type, whether it lost a peer. Never from what a worker printed.

Why not torch.distributed.elastic's start_processes with its per-rank error files (weighed for
issue 24, after torchrun's agent was rejected: README, "The launcher: gpujob's own"): its error
file's timestamp is whole seconds, and a worker with no file (SIGKILL) is given the moment the
agent noticed it, so the smallest timestamp it blames is often the peer that lost its
connection, not the rank that died, and a file says nothing of a lost peer; it stops every
worker the moment one fails, before a hung rank can be told from the rank that timed out waiting
for it; its workers outlive a SIGKILLed agent (no PR_SET_PDEATHSIG), a SIGSTOPped one is not woken to
checkpoint on its SIGTERM, and its logs are named files in a folder, where gpujob's leave nothing.
Its idea is kept: one error file per rank, written by the worker, read by its parent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import BAD_INPUT, JOB_FAILED, GpujobError, job_failed, last_error_line
from runner.invocation import command
from runner.runs.paths import SUMMARY
from runner.launching.blame import ERROR_FILE, Ending, ErrorRecord, failed_ranks, hung_ranks
from runner.launching.topology import Topology, free_port, port_in_use, port_taken
from runner.runs.lock import INHERITED
from runner.training.distributed import JOINED
from runner.training.sampler import SAMPLES_TO_ENV
from runner.training.threads import THREADS_WHY, choose_threads, machine_load, threads_as_before
from runner.spec.model import JobSpec
from runner.errors import BUDGET_REACHED, INTERRUPTED, PREEMPTED

if TYPE_CHECKING:
    from runner.runs.folder import RunFolder

FAILED_GRACE_S = 5.0  # the other workers of a failed job: nothing of theirs is worth waiting for
WAITING_EVERY_S = 10.0  # multi-node: how often to say that this node still waits for the others


# What torch's C++ side prints while a rendezvous retries (log lines and their stack frames): kept
# in the worker's log, not shown; if the rendezvous fails, the launcher says why in one line.
RENDEZVOUS_CHATTER = re.compile(rb"^(\[[WEI]\d{4} |Exception raised from |frame #\d+: |<omitting python frames>|\s*$)")


STARTED_AT = "GPUJOB_STARTED_AT"  # the job's start (wall clock, launcher's): its workers' start-up begins there


class NeverJoined(GpujobError):
    """The nodes never all met: nothing was trained, so node 0 leaves no run folder behind."""


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the launcher dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _process_state(pid: int) -> str:
    """'stopped' (SIGSTOP), 'in uninterruptible I/O' or 'running', as Linux's /proc says."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "running"
    return {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "D": "stuck in uninterruptible I/O"}.get(
        state, "still running but silent")


def _threads(resumed_run: Path | None, workers: int):
    """A resumed run's own count (threads_as_before) unless the user set one; else by the load."""
    if resumed_run is not None and "OMP_NUM_THREADS" not in os.environ:
        return threads_as_before(resumed_run, workers) or choose_threads(workers, os.environ, load=machine_load())
    return choose_threads(workers, os.environ, load=machine_load())


class Launch:
    """One node's workers. Nothing of it outlives it, even a SIGKILL: the spec the workers read,
    their logs and their error records are unlinked temporary files (the workers get them as open
    descriptors), and every worker dies with the launcher (PR_SET_PDEATHSIG)."""

    def __init__(self, spec: JobSpec, topology: Topology, run_dir: Path | None, resume: bool = False,
                 started: float | None = None, samples_to: Path | None = None):
        self.spec, self.topology, self.run_dir, self.resume = spec, topology, run_dir, resume
        self.samples_to = samples_to  # another node's: the run folder its first worker samples into
        # the job's start on the wall clock, for the workers' timing of their start-up phases
        self.started_at = time.time() - (time.perf_counter() - started) if started is not None else time.time()
        self.spec_file = tempfile.TemporaryFile()  # unlinked: it vanishes with the last descriptor
        self.spec_file.write(spec.to_yaml().encode())
        self.spec_file.flush()
        self.logs = [tempfile.TemporaryFile() for _ in range(topology.nproc_per_node)]
        self.records = [tempfile.TemporaryFile() for _ in range(topology.nproc_per_node)]  # blame.ErrorRecord
        self.procs: list[subprocess.Popen] = []
        self.stop_signal: int | None = None
        self.signalled: dict[int, float] = {}  # local ranks this launcher sent a signal: when it first did
        self.ended_at: dict[int, float] = {}  # local ranks seen to have ended: when (wall clock)
        self.tees: list[threading.Thread] = []
        self.checkpoint_before = _newest_checkpoint(run_dir)
        self.port: int | None = None

    def _rank(self, local_rank: int) -> int:
        return self.topology.node_rank * self.topology.nproc_per_node + local_rank

    def _worker_env(self, local_rank: int, port: int) -> dict:
        t = self.topology
        env = dict(os.environ)
        env.update(RANK=str(self._rank(local_rank)), LOCAL_RANK=str(local_rank),
                   WORLD_SIZE=str(t.world_size), LOCAL_WORLD_SIZE=str(t.nproc_per_node),
                   GROUP_RANK=str(t.node_rank), MASTER_ADDR=t.master_addr, MASTER_PORT=str(port),
                   PYTHONUNBUFFERED="1")
        if self.run_dir is not None:  # node 0: the workers run under this launcher's lock on the folder
            env[INHERITED] = str(Path(self.run_dir).resolve())
        if self.samples_to is not None and local_rank == 0:
            env[SAMPLES_TO_ENV] = str(Path(self.samples_to).resolve())
        env["GPUJOB_INNER_RUN"] = "1"  # runner.cli.INNER_RUN: this launcher names the run folder, once
        env[STARTED_AT] = repr(self.started_at)
        env[ERROR_FILE] = f"/dev/fd/{self.records[local_rank].fileno()}"
        # Workers on one CPU share its cores; oversubscribed OpenMP threads slow every rank down.
        threads = _threads(self.run_dir if self.resume else None, t.nproc_per_node)
        env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS") or str(threads.threads), **{THREADS_WHY: threads.why})
        return env

    def start(self) -> None:
        self.port = self.topology.master_port or free_port()
        spec_path = f"/dev/fd/{self.spec_file.fileno()}"
        for local_rank, log in enumerate(self.logs):
            command = [sys.executable, "-m", "runner.cli", "run", spec_path, "--worker"]
            if self.run_dir is not None:
                command += ["--run-dir", str(self.run_dir)]
            if self.resume:
                command += ["--resume"]
            rank = self._rank(local_rank)
            shown = local_rank == 0  # its progress (global rank 0) and its warnings reach the user
            proc = subprocess.Popen(
                command, env=self._worker_env(local_rank, self.port), stdin=subprocess.DEVNULL,
                stdout=None if rank == 0 else log, stderr=subprocess.PIPE if shown else log,
                pass_fds=(self.spec_file.fileno(), self.records[local_rank].fileno()), start_new_session=True,
                preexec_fn=_die_with_parent)
            self.procs.append(proc)
            if shown:
                self.tees.append(threading.Thread(target=_tee, args=(proc, log), daemon=True))
                self.tees[-1].start()

    def lines(self, local_rank: int) -> list[str]:
        if local_rank == 0:
            for tee in self.tees:
                tee.join(timeout=5)  # everything it read is in the log once the worker has exited
        return _contents(self.logs[local_rank]).decode(errors="replace").splitlines()

    def _poll(self) -> list[int | None]:
        """Each worker's exit status (None: running); the moment each was first seen ended."""
        codes = [p.poll() for p in self.procs]
        for local_rank, code in enumerate(codes):
            if code is not None:
                self.ended_at.setdefault(local_rank, time.time())
        return codes

    def _endings(self) -> list[Ending]:
        """How each worker ended, or that it still runs, with the record it left. One this
        launcher signalled before it failed by itself was stopped: what it did then is a consequence."""
        endings = []
        for local_rank, code in enumerate(self._poll()):
            record = ErrorRecord.parse(_contents(self.records[local_rank]))
            signalled = self.signalled.get(local_rank)
            stopped = signalled is not None and (record is None or record.time >= signalled)
            endings.append(Ending(local_rank, code, self.ended_at.get(local_rank), stopped, record))
        return endings

    def _signal_all(self, signum: int) -> None:
        for local_rank, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.signalled.setdefault(local_rank, time.time())
                try:
                    os.killpg(proc.pid, signum)  # the worker and its DataLoader processes
                    if signum == signal.SIGTERM:
                        os.killpg(proc.pid, signal.SIGCONT)  # a stopped (SIGSTOP) worker must see it
                except ProcessLookupError:
                    pass

    def stop_all(self, grace_s: float | None = None) -> None:
        """SIGTERM every worker, then SIGKILL those that have not ended after `grace_s` (by default
        train.stop_grace_s: the time a stopped job has to write its checkpoint)."""
        grace_s = self.spec.train.stop_grace_s if grace_s is None else grace_s
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def watch(self, timeout_s: float) -> None:
        """Wait for every worker; raise a GpujobError for the first real failure."""
        started = time.monotonic()
        deadline, said_waiting = started + timeout_s, started
        while True:
            if self.stop_signal is not None:
                self.stop_all()
                if all(c == 0 for c in self._poll()):  # every worker had finished as the signal came
                    return
                code = PREEMPTED if self.stop_signal == signal.SIGTERM else INTERRUPTED
                raise self._stopped(f"stopped by {signal.Signals(self.stop_signal).name}", code)
            codes = self._poll()
            if codes and all(c == PREEMPTED for c in codes):  # SIGTERM reached the workers directly
                raise self._stopped("stopped by SIGTERM", PREEMPTED)
            if codes and codes[0] == BUDGET_REACHED:  # every rank stops with it, after its checkpoint
                raise over_budget(self)
            if any(c not in (None, 0, PREEMPTED, BUDGET_REACHED) for c in codes):  # those wait for rank 0's
                # The failing rank's peers notice its closed connections and fail at once, often
                # before it has finished exiting: give every rank a moment to end on its own.
                settle = time.monotonic() + 3.0
                while None in self._poll() and time.monotonic() < settle:
                    time.sleep(0.05)
                alive = {r: _process_state(p.pid) for r, p in enumerate(self.procs) if p.poll() is None}
                hung = hung_ranks(self._endings())  # before they are stopped: still running, not answering
                self.stop_all(grace_s=FAILED_GRACE_S)
                raise self._failure(alive, hung)
            if all(c == 0 for c in codes):
                return
            if time.monotonic() > deadline:
                self.stop_all()
                raise self._stopped(f"the job ran past resources.timeout_minutes "
                                    f"({self.spec.resources.timeout_minutes} min) and was stopped", JOB_FAILED)
            if self.topology.nnodes > 1 and time.monotonic() - said_waiting >= WAITING_EVERY_S:
                said_waiting = time.monotonic()
                self._say_waiting(said_waiting - started)
            time.sleep(0.1)

    def _say_waiting(self, waited_s: float) -> None:
        """On a multi-node job, while this node's workers wait for the others to join."""
        if all(any(line.startswith(JOINED) for line in self.lines(r)) for r in range(len(self.procs))):
            return
        t = self.topology
        whom = (f"the other {t.nnodes - 1} node(s) to join" if t.node_rank == 0 else "node 0")
        print(f"gpujob: node {t.node_rank} of {t.nnodes} waiting for {whom} at {t.master_addr}:{self.port}, "
              f"{waited_s:.0f} s", file=sys.stderr, flush=True)

    def _stopped(self, what: str, code: int) -> GpujobError:
        """Say only what happened: which checkpoint was written, if any; where to resume, if
        anything can be resumed."""
        newest = _newest_checkpoint(self.run_dir)
        if self.run_dir is None:
            return GpujobError(f"{what}; node 0 keeps the run folder and its checkpoints", code)
        if newest is None:
            return GpujobError(f"{what} before the first checkpoint: nothing was kept", code)
        resume = f"resume with: {command(f'gpujob resume {self.run_dir}')}"
        if newest == self.checkpoint_before:
            return GpujobError(f"{what}; last checkpoint {newest} (no newer one was written); {resume}", code)
        if self.topology.world_size == 1:  # as the worker itself says it
            return GpujobError(f"{what} at step {int(newest.split('-')[1].split('.')[0])}, checkpoint saved; {resume}",
                               code)
        return GpujobError(f"{what}; last checkpoint {newest} (the workers saved it); {resume}", code)

    def _failure(self, alive: dict[int, str], hung: tuple[int, ...]) -> GpujobError:
        endings = self._endings()
        codes = [ending.code for ending in endings]
        failed = failed_ranks(endings, hung) or [r for r, c in enumerate(codes) if c not in (0, None)] or [0]
        local_rank = failed[0]
        rank, world = self._rank(local_rank), self.topology.world_size
        ended = codes[local_rank]
        code = ended if ended is not None and ended in (1, 2, 3) else JOB_FAILED
        lines = self.lines(local_rank)
        report = last_error_line(lines)
        never_started = self._never_started(endings[local_rank], endings)
        if never_started is not None:
            return never_started
        if code == BAD_INPUT and local_rank not in hung:  # the spec's fault, said in one line
            return GpujobError(report, code)
        if world == 1:
            return self._lone_failure(codes[0], report, lines)
        self._keep_log(local_rank)
        where = f" (log: {self.run_dir / f'rank-{rank}.log'})" if self.run_dir else ""
        if local_rank in hung:
            waiting = next((self._rank(r) for r in failed if r not in hung), None)
            return GpujobError(f"rank {rank} of {world} stopped answering ({alive[local_rank]}); rank {waiting} timed "
                               f"out waiting for it after train.collective_timeout_s "
                               f"({self.spec.train.collective_timeout_s} s){where}; the other workers were stopped",
                               JOB_FAILED)
        died = codes[local_rank]
        if died is not None and died < 0 and not endings[local_rank].stopped:
            name = signal.Signals(-died).name
            return GpujobError(f"rank {rank} of {world} was killed by {name}, not by gpujob{_why_killed(died)}{where}; "
                               "the other workers were stopped", JOB_FAILED)
        return GpujobError(f"rank {rank} of {world} failed: {report or f'exit code {died}'}{where}; "
                           "the other workers were stopped", code)

    def _lone_failure(self, code: int | None, report: str, lines: list[str]) -> GpujobError:
        """The one worker of a job failed: in its own words where it said why; otherwise how its
        process ended, with its output kept (the only clue left)."""
        said = any(line.startswith("gpujob: ") for line in lines)
        if said and code in (1, 2, 3):
            return GpujobError(report, code)
        self._keep_log(0)
        where = f"; its output is in {self.run_dir / 'rank-0.log'}" if self.run_dir else ""
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return GpujobError(f"the job's process was killed by {name}, not by gpujob{_why_killed(code)}{where}",
                               JOB_FAILED)
        return GpujobError(f"the job's process ended with exit code {code} before it finished, without an error of "
                           f"its own (os._exit or sys.exit in your code, or a crash in native code?){where}",
                           JOB_FAILED)

    def _never_started(self, blamed: Ending, endings: list[Ending]) -> GpujobError | None:
        """The job failed at the rendezvous, if it did: no worker here had joined, and the one to
        blame lost its peers there. Then rank 0's port may have been taken between gpujob's own
        check and its listen; otherwise, across nodes, the nodes never met."""
        if not blamed.lost_peer or any(e.record is not None and e.record.joined for e in endings):
            return None
        if self._rank(blamed.rank) == 0 and self.port is not None and port_taken(self.port):
            return GpujobError(port_in_use(self.port), BAD_INPUT)
        if self.topology.nnodes == 1:
            return None
        return _never_met(self.topology, self.port, self.spec.train.collective_timeout_s)

    def _keep_log(self, local_rank: int) -> None:
        if self.run_dir is None or not self.run_dir.exists():
            return
        from runner.runs.files import atomic_write

        atomic_write(self.run_dir / f"rank-{self._rank(local_rank)}.log", _contents(self.logs[local_rank]))

    def cleanup(self) -> None:
        for handle in (self.spec_file, *self.logs, *self.records):
            handle.close()


def _why_killed(code: int) -> str:
    """What a worker killed by signal -code most likely met, for its line."""
    if code == -signal.SIGKILL:
        return " (out of memory? the kernel's OOM killer sends SIGKILL)"
    if code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT):
        return " (a crash in native code: a C extension, a driver)"
    return ""


def _never_met(t: Topology, port: int | None, limit: int) -> NeverJoined:
    """This node's side of nodes that never all met, in one line."""
    at = f"{t.master_addr}:{port}"
    if t.node_rank == 0:
        return NeverJoined(f"node 0 of {t.nnodes}: the other {t.nnodes - 1} node(s) did not join at {at} within "
                           f"{limit} s (train.collective_timeout_s); start `gpujob run` on each with --nnodes "
                           f"{t.nnodes} --master-addr {t.master_addr} --master-port {port}", JOB_FAILED)
    return NeverJoined(f"node {t.node_rank} of {t.nnodes} could not reach node 0 at {at} within {limit} s "
                       "(train.collective_timeout_s); check --master-addr and --master-port (node 0's address, "
                       "reachable from here) and that node 0 is running", JOB_FAILED)


def _contents(handle) -> bytes:
    """All of an unlinked temporary file, whatever its writers did with their own offsets."""
    fd = handle.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _tee(proc: subprocess.Popen, log) -> None:
    """Copy a worker's stderr to its log and to the user's terminal, except the rendezvous line,
    torch's chatter before it, and the final error line, which the launcher reports itself (once,
    with the rank)."""
    assert proc.stderr is not None, "_tee follows only the worker started with stderr=PIPE"
    held, joined = None, False
    for raw in proc.stderr:
        log.write(raw)
        log.flush()
        if held is not None:
            sys.stderr.write(held.decode(errors="replace"))
            sys.stderr.flush()
        joined = joined or raw.startswith(JOINED.encode())
        held = None if raw.startswith(JOINED.encode()) or (not joined and RENDEZVOUS_CHATTER.match(raw)) else raw
    if held is not None and not (held.startswith(b"gpujob: ") and proc.wait() != 0):
        sys.stderr.write(held.decode(errors="replace"))
        sys.stderr.flush()


def _newest_checkpoint(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    from runner.training.checkpoint import CheckpointStore

    paths = CheckpointStore(run_dir).paths()
    return paths[0].name if paths else None


def launch(spec: JobSpec, topology: Topology, run_dir: Path | None, resume: bool = False,
           timeout_s: float | None = None, started: float | None = None, samples_to: Path | None = None) -> None:
    """Run one node's workers to the end. Raises GpujobError on failure, timeout or signal.
    `timeout_s`: what is left of resources.timeout_minutes (all of it by default); `started`:
    when the job began in this process (perf_counter), which its workers time their start from."""
    job = Launch(spec, topology, run_dir, resume, started, samples_to)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def on_signal(signum, _frame):
        job.stop_signal = signum

    for signum in previous:
        signal.signal(signum, on_signal)
    try:
        job.start()
        job.watch(spec.resources.timeout_minutes * 60 if timeout_s is None else timeout_s)
    finally:
        if any(p.poll() is None for p in job.procs):
            job.stop_all(grace_s=FAILED_GRACE_S)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        job.cleanup()


def over_budget(launch: Launch) -> GpujobError:
    """Rank 0 stopped the job at resources.max_usd, its checkpoint saved: in its own words, once
    the other ranks, which stop with it, have ended."""
    deadline = time.monotonic() + launch.spec.train.stop_grace_s
    while None in launch._poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    launch.stop_all(grace_s=FAILED_GRACE_S)
    return GpujobError(last_error_line(launch.lines(0)), BUDGET_REACHED)


def run_on_this_node(spec: JobSpec, topology: Topology, run_dir: Path | None, runs_dir: Path,
                     started: float | None = None, resume: bool = False) -> Path | None:
    """One worker in this process, or several through the launcher. Returns the run
    folder on the node that holds rank 0, None on the others. With `resume`, a run_dir
    holding a run continues from its last checkpoint (and a finished one is left as is).
    Node 0 opens and locks the run folder before anything else (torch is not even imported)."""
    from runner.runs.lock import release
    from runner.launching.worker import open_run_folder

    opened = open_run_folder(spec, run_dir, runs_dir, resume) if topology.node_rank == 0 else None
    try:
        # another node samples its devices into the folder where it shares rank 0's (runner/training/sampler.py)
        samples_to = run_dir if topology.node_rank != 0 else None
        return _run_opened(spec, topology, opened, runs_dir, started, resume, samples_to)
    finally:
        if opened:
            release(opened[0].path)


def _run_opened(spec, topology, opened: tuple[RunFolder, bool] | None, runs_dir, started, resume,
                samples_to: Path | None = None) -> Path | None:
    folder, resumed = opened if opened else (None, False)
    if folder is not None and resumed and folder.finished:
        print(f"gpujob: {folder.path} already finished; nothing to resume", file=sys.stderr)
        return folder.path
    # Even one worker runs as a process of its own under this launcher: only a parent can stop a
    # worker blocked in a user's factory when a signal or the time limit comes, and say how one
    # ended that died by a signal, called os._exit or crashed in native code.
    left_s = None if started is None else spec.resources.timeout_minutes * 60 - (time.perf_counter() - started)
    try:
        launch(spec, topology, folder.path if folder else None, resume=resume, timeout_s=left_s, started=started,
               samples_to=samples_to)
        if folder is not None and not folder.finished:
            raise job_failed("the job's process ended with exit code 0 before it finished its epochs (no "
                             f"{SUMMARY}); nothing in gpujob ends a job that way: does your code call sys.exit?")
    except GpujobError as err:
        if folder is not None and not (not resumed and _took_back(folder, err)):
            err.run_dir = folder.path
            if err.exit_code == JOB_FAILED and topology.world_size > 1:
                _keep_verdict(folder, err.message)
        raise
    return folder.path if folder else None


def _keep_verdict(folder, message: str) -> None:
    """The launcher's verdict (which rank failed first, and why) at the end of the run's error.log,
    where `status` reads it: rank 0's own traceback there may only say it lost a peer."""
    try:
        with open(folder.file("error.log"), "a") as log:
            log.write(f"gpujob: {message}\n")
    except OSError:
        pass  # a full or read-only disk: the line was printed, which is all there is


def _took_back(folder, err: GpujobError) -> bool:
    """Whether a new run folder whose launch failed was taken away: only when nothing was trained
    in it (the folder's own rule) and the failure leaves nothing worth keeping: bad input found
    at start-up, a stop before the first step, nodes that never met."""
    stopped = err.exit_code in (PREEMPTED, INTERRUPTED) and folder.made_here
    if err.exit_code == BAD_INPUT or stopped:
        return folder.discard()
    if folder.made_here and isinstance(err, NeverJoined):
        return folder.discard_unstarted()  # not one step, and the error says it all
    return False


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
