"""The slurm backend: one sbatch job runs the worker on every task of `resources.nodes` nodes.

A generated batch script (kept in the run folder's job/ folder, with SLURM's output beside it)
asks for nodes x workers-per-node tasks (one per GPU, or `resources.processes` on CPU nodes),
takes the rendezvous address from SLURM's node list, and starts the same worker every backend
runs with `srun --kill-on-bad-exit`, so one failing rank stops the job:

    srun ... python -m runner.cli run job/spec.yaml --run-dir RUN --worker --resume

`--resume` makes a requeued job (SLURM preemption) continue from its last checkpoint into the
same run folder. The run folder must be on a file system the nodes share with this machine
(the usual home or project directory on a cluster); this process follows the job with
`scontrol`, streams its output, and `scancel`s it on Ctrl-C after letting it checkpoint;
`gpujob resume RUN` submits the same script again, which continues from the last checkpoint.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from runner.backends import Plan
from runner.backends.exit_codes import remote_exit_error
from runner.errors import GpujobError, bad_input, job_failed, missing_backend
from runner.run_folder import JOB_FILES
from runner.spec import JobSpec
from runner.stop_signals import INTERRUPTED

COMMAND_TIMEOUT_S = 30  # for sbatch/scontrol/scancel: a dead controller must not hang gpujob
POLL_S = 0.5
STOP_GRACE_S = 60  # after Ctrl-C: time for the workers to checkpoint before scancel kills them
# Job states after which SLURM runs nothing more for this job (a requeued job goes PENDING again).
# GONE is ours: `scontrol` no longer knows the job (it ended a while ago).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "GONE"}
EXIT_CODE_FILE = "exit-code"


def sbatch_script(spec: JobSpec, run_dir: Path, python: str, workdir: Path) -> str:
    """The batch script for `spec`, writing into `run_dir` (absolute). Pure: --dry-run shows it."""
    s, tasks = spec.slurm, spec.resources.workers_per_node
    job_dir = run_dir / JOB_FILES
    options = [f"--job-name=gpujob-{spec.name}", f"--nodes={spec.resources.nodes}",
               f"--ntasks-per-node={tasks}", f"--time={spec.resources.timeout_minutes}",
               f"--chdir={workdir}", f"--output={job_dir}/slurm-%j.out",
               # A preempted job goes back in the queue and --resume continues it from its checkpoint.
               "--requeue",
               # SIGTERM to the workers shortly before the time limit: they checkpoint and exit,
               # instead of being killed mid-step when it passes.
               f"--signal=TERM@{max(10, min(120, spec.resources.timeout_minutes * 6))}"]
    request = spec.resources.gpu_request
    if request:
        kind = f"{s.gres_type}:" if s.gres_type else ""
        options.append(f"--gres=gpu:{kind}{request.count}")
    for flag, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                        ("cpus-per-task", s.cpus_per_task), ("mem", s.mem)):
        if value is not None:
            options.append(f"--{flag}={value}")
    options += s.sbatch_lines
    worker = shlex.join([python, "-m", "runner.cli", "run", str(job_dir / "spec.yaml"),
                         "--run-dir", str(run_dir), "--worker", "--resume"])
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options), "",
             "# Written by gpujob (backend: slurm); submitted with sbatch from the run folder's job/.",
             "set -uo pipefail",
             # A trapped signal waits for srun to end (the workers checkpoint on SIGTERM), so the
             # exit code below is still written; an ignored one would be inherited by the workers.
             "trap ':' TERM INT",
             f"rm -f {shlex.quote(str(job_dir / EXIT_CODE_FILE))} {shlex.quote(str(job_dir))}/rank-*.exit",
             *s.setup,
             "export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
             # Rank 0 runs on the first node, where this script runs: its address and a free port.
             'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             f"export MASTER_PORT=$({shlex.quote(python)} -c 'import socket; s = socket.socket(); "
             "s.bind((\"\", 0)); print(s.getsockname()[1])')",
             # Each task records its worker's exit code: srun reports only the highest, and the
             # ranks that srun stopped after a failure exit 143, hiding the failing rank's 1.
             "srun --kill-on-bad-exit=1 --label bash -c 'trap : TERM INT; export RANK=$SLURM_PROCID "
             "LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; "
             f"\"$@\"; code=$?; echo $code > {shlex.quote(str(job_dir))}/rank-$RANK.exit; exit $code' worker "
             f"{worker}",
             "code=$?",
             f"echo $code > {shlex.quote(str(job_dir / EXIT_CODE_FILE))}",
             "exit $code", ""]
    return "\n".join(lines)


def _slurm_command(args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a missing client or a silent controller is exit code 3."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise missing_backend(f"slurm: `{args[0]}` not found; run gpujob on a machine with SLURM's client "
                              "commands (a cluster's login node), or pick another --backend") from None
    except subprocess.TimeoutExpired:
        raise missing_backend(f"slurm: the SLURM controller did not answer `{args[0]}` within "
                              f"{COMMAND_TIMEOUT_S} s while {what}; check `scontrol ping`") from None


def require_controller() -> None:
    ping = _slurm_command(["scontrol", "ping"], "checking the controller")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        raise missing_backend(f"slurm: the SLURM controller is not answering ({said[-1] if said else 'no reply'}); "
                              "ask your cluster's admins, or check `scontrol ping`")


# sbatch's own wording for requests the cluster refuses: the spec's fault, not the cluster's.
REFUSALS = {"partition": "slurm.partition", "account": "slurm.account", "qos": "slurm.qos",
            "gres": "resources.gpu / slurm.gres_type", "node count": "resources.nodes",
            "memory": "slurm.mem", "time limit": "resources.timeout_minutes",
            "node configuration": "resources (nodes, gpu, processes)", "cpu count": "slurm.cpus_per_task"}


def submit(script: Path) -> str:
    result = _slurm_command(["sbatch", "--parsable", str(script)], "submitting the job")
    if result.returncode == 0:
        return result.stdout.strip().split(";")[0]  # "JOBID" or "JOBID;CLUSTER"
    reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
    reason = reason.removeprefix("sbatch: error: ")
    if re.search(r"contact slurm controller|connection refused|socket timed out", reason, re.I):
        raise missing_backend(f"slurm: sbatch could not reach the controller: {reason}")
    field = next((name for word, name in REFUSALS.items() if word in reason.lower()), "slurm")
    raise bad_input(f"{field}: sbatch refused the job: {reason}")


def job_state(job_id: str) -> tuple[str, str]:
    """(state, reason) from `scontrol show job`; ("GONE", "") once SLURM has forgotten the job."""
    result = _slurm_command(["scontrol", "show", "job", "--oneliner", job_id], "following the job")
    if result.returncode != 0:
        if "invalid job id" in result.stderr.lower():
            return "GONE", ""
        raise missing_backend(f"slurm: lost contact with the controller: {result.stderr.strip()}")
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None")


class OutputFollower:
    """Echo what the job's output file gains, as it gains it: rank 0's lines as they are (its
    progress), other ranks' with their rank in front; keep each rank's last lines."""

    LABEL = re.compile(r"^\s*(\d+): ?(.*)$")  # srun --label's "RANK: text"

    def __init__(self, path: Path, skip_existing: bool = False):
        self.path, self.tails, self.partial = path, {}, b""
        self.offset = path.stat().st_size if skip_existing and path.exists() else 0

    def poll(self, final: bool = False) -> None:
        """Show the lines written since the last poll; with `final`, an unfinished last line too."""
        if not self.path.exists():
            return
        if self.path.stat().st_size < self.offset:
            self.offset = 0  # a requeued job's output file starts again
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if final and self.partial:
            lines, self.partial = lines + [self.partial], b""
        for raw in lines:
            line = raw.decode(errors="replace")
            match = self.LABEL.match(line)
            rank, text = (int(match[1]), match[2]) if match else (None, line)
            print(text if rank in (0, None) else f"[rank {rank}] {text}", flush=True)
            tail = self.tails.setdefault(rank, [])
            tail.append(text)
            del tail[:-200]

    def lines(self, rank: int | None = None) -> list[str]:
        """Rank `rank`'s last lines, or every line kept (the script's own first) when None."""
        if rank is not None:
            return self.tails.get(rank, [])
        return [line for key in sorted(self.tails, key=lambda r: -1 if r is None else r) for line in self.tails[key]]


class SlurmBackend:
    name = "slurm"

    def _python(self, spec: JobSpec) -> str:
        return spec.slurm.python or sys.executable

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path) -> Plan:
        placeholder = Path(runs_dir).resolve() / f"{spec.name}-DATE-TIME"
        script = sbatch_script(spec, placeholder, self._python(spec), Path.cwd())
        world = spec.resources.nodes * spec.resources.workers_per_node
        details = {"nodes": spec.resources.nodes, "tasks per node": spec.resources.workers_per_node,
                   "sbatch script": "\n" + script}
        return Plan(self.name, spec, spec_path, runs_dir, world_size=world, details=details)

    def run(self, plan: Plan) -> Path:
        from runner.run_folder import RunFolder

        require_controller()
        folder = RunFolder.create(plan.runs_dir, plan.spec.name).path.resolve()
        job_dir = folder / JOB_FILES
        job_dir.mkdir()
        (job_dir / "spec.yaml").write_text(plan.spec.to_yaml())
        script = job_dir / "job.sbatch"
        script.write_text(sbatch_script(plan.spec, folder, self._python(plan.spec), Path.cwd()))
        try:
            job_id = submit(script)
        except GpujobError:
            _remove_unused(folder)
            raise
        return self._follow_to_end(plan.spec, folder, job_id)

    def resume(self, folder: Path) -> Path:
        """Submit a stopped run's batch script again: its workers run with --resume, so the job
        continues from the last checkpoint into the same folder (`gpujob resume RUN`)."""
        from runner.spec import load_spec

        require_controller()
        folder = folder.resolve()
        spec = load_spec(folder / JOB_FILES / "spec.yaml")
        return self._follow_to_end(spec, folder, submit(folder / JOB_FILES / "job.sbatch"))

    def _follow_to_end(self, spec: JobSpec, folder: Path, job_id: str) -> Path:
        output = folder / JOB_FILES / f"slurm-{job_id}.out"
        print(f"gpujob: submitted SLURM job {job_id}; output: {output}", file=sys.stderr)
        try:
            state, follower = self._follow(job_id, output)
        except KeyboardInterrupt:
            self._stop(job_id, output)
            raise GpujobError(f"slurm: interrupted; job {job_id} checkpointed and was cancelled; its run folder is "
                              f"{folder}; continue it with: gpujob resume {folder}", INTERRUPTED) from None
        return self._outcome(spec, folder, job_id, state, follower)

    def _follow(self, job_id: str, output: Path) -> tuple[str, OutputFollower]:
        follower, said = OutputFollower(output), None
        while True:
            state, reason = job_state(job_id)
            follower.poll()
            if state in FINAL_STATES:
                time.sleep(POLL_S)  # the last lines may reach the file just after the state changes
                follower.poll(final=True)
                return state, follower
            if state == "PENDING" and reason not in (said, "None"):
                print(f"gpujob: SLURM job {job_id} is waiting: {reason}", file=sys.stderr)
                said = reason
            time.sleep(POLL_S)

    def _stop(self, job_id: str, output: Path) -> None:
        print(f"\ngpujob: stopping SLURM job {job_id} (the workers save a checkpoint first)", file=sys.stderr)
        _slurm_command(["scancel", "--signal=TERM", job_id], "stopping the job")  # the workers, not srun
        follower, deadline = OutputFollower(output, skip_existing=True), time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and job_state(job_id)[0] not in FINAL_STATES:
            follower.poll()
            time.sleep(POLL_S)
        _slurm_command(["scancel", job_id], "cancelling the job")

    def _outcome(self, spec: JobSpec, folder: Path, job_id: str, state: str, output: OutputFollower) -> Path:
        job_dir = folder / JOB_FILES
        if state == "TIMEOUT":
            raise job_failed(f"slurm: job {job_id} ran past resources.timeout_minutes "
                             f"({spec.resources.timeout_minutes} min) and was stopped; its last checkpoint is in "
                             f"{folder}; continue it with: gpujob resume {folder}")
        if not output.path.exists() and state != "CANCELLED":
            raise job_failed(f"slurm: job {job_id} ended {state}, but nothing it wrote is visible here; --runs-dir "
                             f"({folder.parent}) must be on a file system the compute nodes share with this machine")
        if not (job_dir / EXIT_CODE_FILE).exists():
            raise job_failed(f"slurm: job {job_id} ended {state} before its script finished; see "
                             f"{job_dir}/slurm-{job_id}.out")
        code, lines = int((job_dir / EXIT_CODE_FILE).read_text()), output.lines()
        failed = failed_rank(job_dir, output)
        if failed is not None:
            code, lines = failed
        error = remote_exit_error(code, lines, f"slurm job {job_id}", folder)
        if error is not None:
            if error.exit_code == 2:
                _remove_unused(folder)
            raise error
        return folder


def failed_rank(job_dir: Path, output: OutputFollower) -> tuple[int, list[str]] | None:
    """(exit code, its lines) of the rank whose failure ended the job, if one failed: not one of
    those that srun stopped afterwards, nor one that failed only because another rank died."""
    from runner.launch import failed_ranks

    codes = {int(path.stem.removeprefix("rank-")): int(path.read_text())
             for path in job_dir.glob("rank-*.exit")}
    failed = failed_ranks(codes, {rank: output.lines(rank) for rank in codes})
    return (codes[failed[0]], output.lines(failed[0])) if failed else None


def _remove_unused(folder: Path) -> None:
    """A run folder gpujob made that never held a run: take it away, job files included."""
    import shutil

    from runner.run_folder import SPEC

    if not (folder / SPEC).exists():
        shutil.rmtree(folder, ignore_errors=True)


BACKEND = SlurmBackend()
