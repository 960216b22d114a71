"""The slurm backend: one sbatch job runs the worker on every task of `resources.nodes` nodes.

The batch script (runner/backends/slurm/script.py) is kept in the run folder's job/ folder,
with SLURM's output beside it; it asks for nodes x workers-per-node tasks (one per GPU, or
`resources.processes` on CPU nodes) and starts the same worker every backend runs with
`srun --kill-on-bad-exit`, so one failing rank stops the job. The run folder must be on a file
system the nodes share with this machine (the usual home or project directory on a cluster).

Attached, this process follows the job with `scontrol`, streams its output, and `scancel`s it
on Ctrl-C after letting it checkpoint. `--detach` submits and returns; `status`, `logs` and
`cancel` then take the job id from the run's record, and `resume` submits the same script
again, which continues from the last checkpoint.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner import run_lock, run_record
from runner.backends import PENDING, RUNNING, Plan, Run, RunState
from runner.backends.exit_codes import remote_exit_error
from runner.backends.slurm.commands import (FINAL_STATES, OutputFollower, job_start_time, job_state,
                                            require_controller, sbatch, slurm_command)
from runner.backends.slurm.script import EXIT_CODE_FILE, sbatch_script
from runner.errors import GpujobError, job_failed
from runner.run_folder import JOB_FILES
from runner.spec import JobSpec
from runner.stop_signals import INTERRUPTED, PREEMPTED

POLL_S = 0.5
STOP_GRACE_S = 30  # after Ctrl-C or cancel, besides train.stop_grace_s: SLURM's own time to pass the signal on
SCRIPT = "job.sbatch"


@dataclass(frozen=True)
class SlurmRequest:
    """The batch script, exactly as sbatch gets it, for the run folder it writes into."""

    script: str
    run_dir: Path


class SlurmBackend:
    name = "slurm"
    folder_is_here = True  # the job writes its run folder here: an unstarted one can go
    ships_code = True  # a copy in the run's job/code, which the job imports

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        folder = (Path(runs_dir) / run_name).resolve()
        script = sbatch_script(spec, folder, spec.slurm.python or sys.executable, Path.cwd())
        world = spec.resources.nodes * spec.resources.workers_per_node
        return Plan(self.name, spec, spec_path, runs_dir, run_name, world, SlurmRequest(script, folder),
                    rows=[("nodes", str(spec.resources.nodes)),
                          ("tasks per node", str(spec.resources.workers_per_node)),
                          ("sbatch script", "\n" + script)])

    def submit(self, plan: Plan, run: Run, detach: bool) -> None:
        require_controller()
        job_dir = run.folder / JOB_FILES
        job_dir.mkdir(exist_ok=True)
        (job_dir / "spec.yaml").write_text(plan.spec.to_yaml())
        (job_dir / SCRIPT).write_text(plan.request.script)
        self._send(run, plan.spec, detach)

    def _send(self, run: Run, spec: JobSpec, detach: bool) -> None:
        job_id = sbatch(run.folder / JOB_FILES / SCRIPT)
        run.record = run_record.update(run.folder, handles={"slurm_job_id": job_id})
        output = _output(run.folder, job_id)
        print(f"gpujob: submitted SLURM job {job_id}; output: {output}", file=sys.stderr)
        if not detach:
            self._follow_to_end(spec, run.folder, job_id)

    def _follow_to_end(self, spec: JobSpec, folder: Path, job_id: str) -> None:
        try:
            state, follower = self._follow(job_id, _output(folder, job_id), folder)
        except KeyboardInterrupt:
            self._stop(job_id, _output(folder, job_id), spec.train.stop_grace_s)
            raise GpujobError(f"slurm: interrupted; job {job_id} checkpointed and was cancelled; its run folder is "
                              f"{folder}; continue it with: gpujob resume {folder}", INTERRUPTED) from None
        self._outcome(spec, folder, job_id, state, follower)

    def _follow(self, job_id: str, output: Path, folder: Path) -> tuple[str, OutputFollower]:
        follower, said, queued = OutputFollower(output), None, True
        while True:
            state, reason = job_state(job_id)
            if queued and state != "PENDING":  # the time in SLURM's queue, a start-up phase (gpujob show)
                _note_queue_time(folder, job_id)
                queued = False
            _echo(follower.poll())
            if state in FINAL_STATES:
                time.sleep(POLL_S)  # the last lines may reach the file just after the state changes
                _echo(follower.poll(final=True))
                return state, follower
            if state == "PENDING" and reason not in (said, "None"):
                print(f"gpujob: SLURM job {job_id} is waiting: {reason}", file=sys.stderr)
                said = reason
            time.sleep(POLL_S)

    def _stop(self, job_id: str, output: Path, grace_s: int) -> None:
        print(f"\ngpujob: stopping SLURM job {job_id} (the workers save a checkpoint first)", file=sys.stderr)
        slurm_command(["scancel", "--signal=TERM", job_id], "stopping the job")  # the workers, not srun
        follower = OutputFollower(output, skip_existing=True)
        deadline = time.monotonic() + grace_s + STOP_GRACE_S
        while time.monotonic() < deadline and job_state(job_id)[0] not in FINAL_STATES:
            _echo(follower.poll())
            time.sleep(POLL_S)
        slurm_command(["scancel", job_id], "cancelling the job")

    def _outcome(self, spec: JobSpec, folder: Path, job_id: str, state: str, output: OutputFollower) -> None:
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
                             f"{_output(folder, job_id)}")
        code, lines, where = int((job_dir / EXIT_CODE_FILE).read_text()), output.lines(), f"slurm job {job_id}"
        failed = failed_rank(job_dir, output)
        if failed is not None:
            code, lines = failed.code, failed.lines
            world = spec.resources.nodes * spec.resources.workers_per_node
            where += f": rank {failed.rank} of {world}" + (f" on node {failed.node}" if failed.node else "")
            if failed.signal is not None:
                from runner.lifecycle import resume_hint

                cause = " (out of memory? the kernel's OOM killer sends SIGKILL)" if failed.signal == "SIGKILL" else ""
                raise job_failed(f"{where} was killed by {failed.signal}, not by gpujob{cause}; srun stopped the other "
                                 f"ranks; {resume_hint(folder)}")
        error = remote_exit_error(code, lines, where, folder)
        if error is not None:
            raise error

    def status(self, run: Run) -> RunState:
        from runner.lifecycle import ended_state

        job_id = run.handles.get("slurm_job_id")
        if job_id is None:
            return ended_state(run, None, "it was never submitted")
        state, reason = job_state(job_id)
        if state == "PENDING":
            return RunState(PENDING, f"SLURM job {job_id} is waiting: {reason}")
        if state not in FINAL_STATES or run_lock.holder(run.folder) is not None:
            return RunState(RUNNING, f"SLURM job {job_id} is {state.lower()}")
        code_file = run.folder / JOB_FILES / EXIT_CODE_FILE
        code = int(code_file.read_text()) if code_file.exists() else None
        return ended_state(run, code, f"SLURM job {job_id} ended {state}")

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

    def cancel(self, run: Run) -> str:
        from runner.lifecycle import resume_hint

        state = self.status(run)
        if not state.live:
            return f"{run.folder.name} is not running ({state.describe()}); nothing to cancel"
        run.record.note("cancel asked")
        run_record.write(run.folder, run.record)
        job_id = run.handles["slurm_job_id"]
        if state.state == PENDING:  # nothing ran yet: nothing to checkpoint
            slurm_command(["scancel", job_id], "cancelling the job")
        else:
            from runner.spec import load_spec

            grace = load_spec(run.folder / JOB_FILES / "spec.yaml").train.stop_grace_s
            self._stop(job_id, _output(run.folder, job_id), grace)
        return f"cancelled {run.folder.name} (SLURM job {job_id}); {resume_hint(run.folder)}"

    def fetch(self, run: Run) -> str:
        return f"{run.folder.name} ran on SLURM nodes that share this file system: its folder is already here"

    def resume(self, run: Run, detach: bool) -> None:
        """Submit the run's batch script again: its workers run with --resume, so the job
        continues from the last checkpoint into the same folder."""
        from runner.spec import load_spec

        require_controller()
        self._send(run, load_spec(run.folder / JOB_FILES / "spec.yaml"), detach)


def _output(folder: Path, job_id: str) -> Path:
    return folder / JOB_FILES / f"slurm-{job_id}.out"


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


@dataclass(frozen=True)
class RankEnd:
    """How the rank that ended a job ended: its exit code as its shell saw it, its node, its last lines."""

    rank: int
    code: int
    node: str | None
    lines: list[str]

    @property
    def signal(self) -> str | None:
        """The signal that killed its worker ("SIGKILL"), unless it is one of gpujob's own stops
        (SIGTERM, SIGINT: the worker checkpoints and exits 143 or 130) or the worker said why."""
        import signal

        if self.code in (PREEMPTED, INTERRUPTED) or not 128 < self.code < 128 + signal.NSIG:
            return None
        if any(line.startswith("gpujob: ") for line in self.lines):
            return None
        try:
            return signal.Signals(self.code - 128).name
        except ValueError:
            return None


# srun's own line for a task that ended badly, e.g. "srun: error: node2: task 1: Killed".
SRUN_TASK_ENDED = re.compile(r"^srun: error: (\S+): tasks? ([\d,-]+): (.+)$")


def rank_exits(job_dir: Path, output: OutputFollower) -> dict[int, tuple[int, str | None]]:
    """{rank: (exit code, node)} from the files each task's shell writes (job.sbatch), and, for
    a task whose shell died with its worker (its process group killed, its node lost), from
    srun's own line. Of those, only the first srun reports can have ended the job: srun stopped
    the ones after it, and they count as stopped (-SIGKILL)."""
    import signal

    exits: dict[int, tuple[int, str | None]] = {}
    for path in job_dir.glob("rank-*.exit"):
        code, _, node = path.read_text().strip().partition(" ")  # "CODE NODE"; "CODE" before nodes were named
        exits[int(path.stem.removeprefix("rank-"))] = (int(code), node or None)
    first = True
    for line in output.unlabelled():
        match = SRUN_TASK_ENDED.match(line)
        if not match:
            continue
        how = match[3]
        code = (int(how.rsplit(" ", 1)[-1]) if how.startswith("Exited with exit code") else
                128 + signal.SIGKILL if how.startswith("Killed") else PREEMPTED)
        for rank in _task_ids(match[2]):
            exits.setdefault(rank, (code if first else -signal.SIGKILL, match[1]))
        first = False
    return exits


def _task_ids(listed: str) -> list[int]:
    """srun's task list, "1" or "0-1,3", as ranks."""
    ids = []
    for part in listed.split(","):
        low, _, high = part.partition("-")
        ids += range(int(low), int(high or low) + 1)
    return ids


def failed_rank(job_dir: Path, output: OutputFollower) -> RankEnd | None:
    """The rank whose failure ended the job, if one failed: not one of those that srun stopped
    afterwards, nor one that failed only because another rank died."""
    from runner.launch import failed_ranks

    exits = rank_exits(job_dir, output)
    failed = failed_ranks({rank: code for rank, (code, _) in exits.items()}, {rank: output.lines(rank) for rank in exits})
    if not failed:
        return None
    code, node = exits[failed[0]]
    return RankEnd(failed[0], code, node, output.lines(failed[0]))


BACKEND = SlurmBackend()
