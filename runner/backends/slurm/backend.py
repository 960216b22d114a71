"""The slurm backend: one sbatch job runs the worker on every task of `resources.nodes` nodes.

The batch script (runner/backends/slurm/script.py) is kept in the run folder's job/ folder as
job.sbatch (what sbatch reads; job/request.json records the same text), with SLURM's output
beside it; it asks for nodes x workers-per-node tasks (one per GPU, or `resources.processes` on
CPU nodes) and starts the same worker every backend runs with `srun --kill-on-bad-exit`, so one
failing rank stops the job. The run folder must be on a file system the nodes share with this
machine (the usual home or project directory on a cluster).

Attached, this process follows the job with `scontrol`, streams its output, and `scancel`s it
on Ctrl-C after letting it checkpoint. `--detach` submits and returns; `status`, `logs` and
`cancel` then take the job id from the run's record, and `resume` submits the same script
again, which continues from the last checkpoint.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner.backends.base import Backend, Plan, Target, catalog_target
from runner.backends.exit_codes import remote_exit_error
from runner.backends.slurm.commands import (FINAL_STATES, OutputFollower, job_restarts, job_start_time, job_state,
                                            require_controller, sbatch, slurm_command)
from runner.backends.slurm.outcome import ScriptExit, failed_rank, rank_ends, script_exit
from runner.backends.slurm.script import check_path, sbatch_script
from runner.errors import INTERRUPTED, JOB_FAILED, GpujobError, job_failed
from runner.invocation import command
from runner.runs import lock as run_lock
from runner.runs import record as run_record
from runner.runs.files import atomic_write
from runner.runs.paths import RunPaths
from runner.runs.state import PENDING, RUNNING, Run, RunState, ended_state, resume_hint
from runner.spec.model import JobSpec

POLL_S = 0.5
SCRIPT = "job.sbatch"  # in job/: the batch script, as sbatch reads it


@dataclass(frozen=True)
class SlurmRequest:
    """The batch script, exactly as sbatch gets it, for the run folder it writes into."""

    script: str
    run_dir: Path

    def to_json(self) -> dict:
        return {"script": self.script, "run_dir": str(self.run_dir)}

    @classmethod
    def from_json(cls, data: dict) -> "SlurmRequest":
        return cls(str(data["script"]), Path(data["run_dir"]))


class SlurmBackend(Backend):
    name = "slurm"
    folder_is_here = True  # the job writes its run folder here (a file system the nodes share)
    ships_code = True  # a copy in the run's job/code, which the job imports
    request_type = SlurmRequest
    fans_out = True  # a sweep is one job array (runner/backends/slurm/array.py)

    def target(self, plan: Plan) -> Target:
        if plan.spec.resources.gpu_request is not None:
            return catalog_target(plan.spec, self.name)
        return Target("cpu", None, memory_bytes(plan.spec.slurm.mem), "a slurm CPU machine")

    def code_python(self, spec: JobSpec) -> str | None:
        return spec.slurm.python  # the nodes' Python, as they run it

    def readiness(self) -> str | None:
        if shutil.which("sbatch") is None:  # the controller is asked only at submit: that is a network call
            return ("`sbatch` not found; run gpujob on a machine with SLURM's client commands (a cluster's "
                    "login node)")
        return None

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        check_path(Path(runs_dir).resolve(), "--runs-dir")
        check_path(Path.cwd(), "the folder gpujob runs in")
        folder = (Path(runs_dir) / run_name).resolve()
        script = sbatch_script(spec, folder, spec.slurm.python or sys.executable, Path.cwd())
        world = spec.resources.nodes * spec.resources.workers_per_node
        return Plan(self.name, spec, spec_path, runs_dir, run_name, world, SlurmRequest(script, folder),
                    rows=[("nodes", str(spec.resources.nodes)),
                          ("tasks per node", str(spec.resources.workers_per_node)),
                          ("sbatch script", "\n" + script)])

    def send(self, run: Run, request: SlurmRequest, detach: bool) -> None:
        """sbatch the script (job/job.sbatch, where its output lands too); attached, follow the
        job to its end."""
        from runner.spec.load import load_spec

        require_controller()
        script = run.paths.job / SCRIPT
        atomic_write(script, request.script.encode())  # a run folder's path may be any text
        job_id = sbatch(script)
        run.record = run_record.update(run.folder, handles={"slurm_job_id": job_id})
        print(f"gpujob: submitted SLURM job {job_id}; output: {_output(run.folder, job_id)}", file=sys.stderr)
        if not detach:
            self._follow_to_end(load_spec(run.paths.job_spec), run, job_id)

    def _follow_to_end(self, spec: JobSpec, run: Run, job_id: str) -> None:
        folder = run.folder
        follower = OutputFollower(_output(folder, job_id))
        try:
            state = self._follow(job_id, follower, folder)
        except KeyboardInterrupt:
            self.stop(run, self.status(run))
            _echo(follower.poll(final=True))  # what the workers said as they stopped
            raise GpujobError(f"slurm: interrupted; job {job_id} checkpointed and was cancelled; its run folder is "
                              f"{folder}; continue it with: {command(f'gpujob resume {folder}')}",
                              INTERRUPTED) from None
        self._outcome(spec, folder, job_id, state, follower)

    def _follow(self, job_id: str, follower: OutputFollower, folder: Path) -> str:
        """Echo the job's output until it ends; its final state."""
        said, queued = None, True
        while True:
            state, reason = job_state(job_id)
            if queued and state != "PENDING":  # the time in SLURM's queue, a start-up phase (gpujob show)
                _note_queue_time(folder, job_id)
                queued = False
            _echo(follower.poll())
            if state in FINAL_STATES:
                time.sleep(POLL_S)  # the last lines may reach the file just after the state changes
                _echo(follower.poll(final=True))
                return state
            if state == "PENDING" and reason not in (said, "None"):
                print(f"gpujob: SLURM job {job_id} is waiting: {reason}", file=sys.stderr)
                said = reason
            time.sleep(POLL_S)

    def _outcome(self, spec: JobSpec, folder: Path, job_id: str, state: str, output: OutputFollower) -> None:
        job_dir = RunPaths(folder).job

        def time_limit() -> str:  # resume_hint: a warning during the workers' start-up ended them before any checkpoint
            return (f"slurm: job {job_id} ran past resources.timeout_minutes ({spec.resources.timeout_minutes} min) "
                    f"and was stopped; {resume_hint(folder)}")

        if state == "TIMEOUT":
            raise job_failed(time_limit())
        if not output.path.exists() and state != "CANCELLED":
            raise job_failed(f"slurm: job {job_id} ended {state}, but nothing it wrote is visible here; --runs-dir "
                             f"({folder.parent}) must be on a file system the compute nodes share with this machine")
        ended = script_exit(job_dir)
        if ended is None:
            raise job_failed(f"slurm: job {job_id} ended {state} before its script finished; see "
                             f"{_output(folder, job_id)}")
        restarts = job_restarts(job_id)
        if _earlier_start(ended, restarts):
            reason = job_state(job_id)[1]
            raise job_failed(f"slurm: job {job_id} was requeued, and its restart ({restarts}) ended {state}"
                             + (f" ({reason})" if reason not in ("None", "") else "")
                             + f" before its batch script ran; its last checkpoint is in {folder}; continue it "
                             f"with: {command(f'gpujob resume {folder}')}")
        if _stopped_by_time_limit(folder, job_id):  # by SLURM's warning before the limit (--signal)
            raise job_failed(time_limit())
        failed = failed_rank(rank_ends(job_dir, output))
        code, lines, where = ended.code, output.lines(), f"slurm job {job_id}"
        if failed is not None:
            code, lines = failed.code, list(failed.lines)
            world = spec.resources.nodes * spec.resources.workers_per_node
            where += f": rank {failed.rank} of {world}" + (f" on node {failed.node}" if failed.node else "")
            if failed.signal is not None:
                cause = " (out of memory? the kernel's OOM killer sends SIGKILL)" if failed.signal == "SIGKILL" else ""
                raise job_failed(f"{where} was killed by {failed.signal}, not by gpujob{cause}; srun stopped the other "
                                 f"ranks; {resume_hint(folder)}")
        error = remote_exit_error(code, lines, where, folder)
        if error is not None:
            raise error

    def fan_out(self, spec: JobSpec, sweep_dir: Path, trials: int, parallel: int) -> dict:
        from runner.backends.slurm.array import submit_array

        return submit_array(spec, sweep_dir, trials, parallel)

    def fanned_out_live(self, handles: dict) -> str | None:
        from runner.backends.slurm.array import array_tasks

        tasks = array_tasks(handles)
        if not tasks:
            return None
        counts = {state: tasks.count(state) for state in sorted(set(tasks))}
        return f"SLURM array {handles['slurm_job_id']}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items())

    def stop_fan_out(self, handles: dict) -> None:
        from runner.backends.slurm.array import stop_array

        stop_array(handles)

    def status(self, run: Run) -> RunState:
        job_id = run.handles.get("slurm_job_id")
        if job_id is None:
            return ended_state(run, None, "it was never submitted")
        state, reason = job_state(job_id)
        if state == "PENDING":
            return RunState(PENDING, f"SLURM job {job_id} is waiting: {reason}")
        if state not in FINAL_STATES or run_lock.holder(run.folder) is not None:
            return RunState(RUNNING, f"SLURM job {job_id} is {state.lower()}")
        ended = script_exit(run.paths.job)
        if ended is not None and _earlier_start(ended, job_restarts(job_id)):
            return ended_state(run, JOB_FAILED, f"SLURM job {job_id} was requeued, and its restart ended {state} "
                                                "before its batch script ran")
        if state == "TIMEOUT" or _stopped_by_time_limit(run.folder, job_id):
            return ended_state(run, JOB_FAILED, f"SLURM job {job_id} ran past resources.timeout_minutes")
        return ended_state(run, ended.code if ended else None, f"SLURM job {job_id} ended {state}")

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        job_id = run.handles.get("slurm_job_id")
        if job_id is None:
            return
        follower = OutputFollower(_output(run.folder, job_id))
        while True:
            final = not follow or job_state(job_id)[0] in FINAL_STATES
            yield from follower.poll(final=final)
            if final:
                return
            time.sleep(POLL_S)

    def stop(self, run: Run, state: RunState) -> str:
        said = super().stop(run, state)
        return said or f"cancelled {run.folder.name} (SLURM job {run.handles['slurm_job_id']}); {resume_hint(run.folder)}"

    def ask_to_stop(self, run: Run, state: RunState, grace_s: int) -> None:
        job_id = run.handles["slurm_job_id"]
        if state.state == PENDING:  # nothing ran yet: nothing to checkpoint
            slurm_command(["scancel", job_id], "cancelling the job")
            return
        print(f"\ngpujob: stopping SLURM job {job_id} (the workers save a checkpoint first)", file=sys.stderr)
        slurm_command(["scancel", "--signal=TERM", job_id], "stopping the job")  # the workers, not srun

    def still_running(self, run: Run) -> bool:
        return job_state(run.handles["slurm_job_id"])[0] not in FINAL_STATES

    def end_now(self, run: Run, state: RunState, waited_s: float) -> None:
        slurm_command(["scancel", run.handles["slurm_job_id"]], "cancelling the job")

    def fetch(self, run: Run) -> str:
        return f"{run.folder.name} ran on SLURM nodes that share this file system: its folder is already here"


def memory_bytes(text: str | None) -> int | None:
    """slurm.mem (`64G`, `500M`, `2048`: SLURM's default unit is M) in bytes; None where not given."""
    if not text:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = text[:-1], text[-1].upper()
    if unit.isdigit():
        number, unit = text, "M"  # SLURM's default unit
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        return None


def _output(folder: Path, job_id: str) -> Path:
    return RunPaths(folder).job / f"slurm-{job_id}.out"


def _earlier_start(ended: ScriptExit, restarts: int | None) -> bool:
    """Whether the batch script's exit code is from an earlier start of a requeued job: its
    restart ended before the script ran again (None: SLURM no longer knows the job)."""
    return ended.attempt is not None and restarts is not None and ended.attempt < restarts


def _stopped_by_time_limit(folder: Path, job_id: str) -> bool:
    """Whether SLURM's warning before the time limit stopped the job's workers (rank-N.exit, and
    what they said in the job's output)."""
    output = OutputFollower(_output(folder, job_id))
    output.poll(final=True)
    ends = rank_ends(RunPaths(folder).job, output)
    failed = failed_rank(ends)
    return any(end.stopped_by_time_limit for end in ends.values()) and (failed is None or failed.stopped_by_time_limit)


def _note_queue_time(folder: Path, job_id: str) -> None:
    """From the submission to SLURM's own StartTime of the job (whole seconds: a start within the
    submission's second counts as no wait)."""
    started = job_start_time(job_id)
    if started is None:
        return
    asked = run_record.read(folder).last_start()
    run_record.phase_ended(folder, f"job {job_id} started", "queued (SLURM)",
                           t=max(started, asked) if asked is not None else started)


def _echo(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)



