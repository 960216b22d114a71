"""SLURM's client commands as the slurm backend needs them: every one under a timeout (a dead
controller must not hang gpujob), its refusals turned into one line naming the spec field, and
the job's output file followed as it grows."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from runner.errors import bad_input, missing_backend

COMMAND_TIMEOUT_S = 30
# Job states after which SLURM runs nothing more for this job (a requeued job goes PENDING again).
# GONE is ours: `scontrol` no longer knows the job (it ended a while ago).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "GONE"}


def slurm_command(args: list[str], what: str) -> subprocess.CompletedProcess:
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
    ping = slurm_command(["scontrol", "ping"], "checking the controller")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        raise missing_backend(f"slurm: the SLURM controller is not answering ({said[-1] if said else 'no reply'}); "
                              "ask your cluster's admins, or check `scontrol ping`")


# sbatch's own wording for requests the cluster refuses: the spec's fault, not the cluster's.
REFUSALS = {"partition": "slurm.partition", "account": "slurm.account", "qos": "slurm.qos",
            "gres": "resources.gpu / slurm.gres_type", "node count": "resources.nodes",
            "memory": "slurm.mem", "time limit": "resources.timeout_minutes",
            "node configuration": "resources (nodes, gpu, processes)", "cpu count": "slurm.cpus_per_task"}


def sbatch(script: Path) -> str:
    result = slurm_command(["sbatch", "--parsable", str(script)], "submitting the job")
    if result.returncode == 0:
        return result.stdout.strip().split(";")[0]  # "JOBID" or "JOBID;CLUSTER"
    reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
    reason = reason.removeprefix("sbatch: error: ")
    if re.search(r"contact slurm controller|connection refused|socket timed out", reason, re.I):
        raise missing_backend(f"slurm: sbatch could not reach the controller: {reason}")
    field = next((name for word, name in REFUSALS.items() if word in reason.lower()), "slurm")
    raise bad_input(f"{field}: sbatch refused the job: {reason}")


def _show_job(job_id: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """`scontrol show job`'s answer, and its KEY=VALUE fields."""
    result = slurm_command(["scontrol", "show", "job", "--oneliner", job_id], "following the job")
    return result, dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)


def job_state(job_id: str) -> tuple[str, str]:
    """(state, reason) from `scontrol show job`; ("GONE", "") once SLURM has forgotten the job."""
    result, fields = _show_job(job_id)
    if result.returncode != 0:
        if "invalid job id" in result.stderr.lower():
            return "GONE", ""
        raise missing_backend(f"slurm: lost contact with the controller: {result.stderr.strip()}")
    return fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None")


def job_restarts(job_id: str) -> int | None:
    """How many times SLURM started the job again (requeued); None once it has forgotten the job."""
    _, fields = _show_job(job_id)
    restarts = fields.get("Restarts", "")
    return int(restarts) if restarts.isdigit() else None


def job_start_time(job_id: str) -> float | None:
    """When SLURM started the job (its StartTime, to the second), in epoch seconds; None if unknown."""
    _, fields = _show_job(job_id)
    try:
        return time.mktime(time.strptime(fields.get("StartTime", ""), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # "Unknown", or no answer
        return None


class OutputFollower:
    """What the job's output file gains, as it gains it: rank 0's lines as they are (its
    progress), other ranks' with their rank in front; keeps each rank's last lines."""

    LABEL = re.compile(r"^\s*(\d+): ?(.*)$")  # srun --label's "RANK: text"

    def __init__(self, path: Path, skip_existing: bool = False):
        self.path, self.partial = path, b""
        self.tails: dict[int | None, list[str]] = {}
        self.offset = path.stat().st_size if skip_existing and path.exists() else 0

    def poll(self, final: bool = False) -> list[str]:
        """The lines written since the last poll; with `final`, an unfinished last line too."""
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self.offset:
            self.offset = 0  # a requeued job's output file starts again
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if final and self.partial:
            lines, self.partial = lines + [self.partial], b""
        shown = []
        for raw in lines:
            line = raw.decode(errors="replace")
            match = self.LABEL.match(line)
            rank, text = (int(match[1]), match[2]) if match else (None, line)
            shown.append(text if rank in (0, None) else f"[rank {rank}] {text}")
            tail = self.tails.setdefault(rank, [])
            tail.append(text)
            del tail[:-200]
        return shown

    def unlabelled(self) -> list[str]:
        """The last lines of no rank: the batch script's own and srun's."""
        return self.tails.get(None, [])

    def lines(self, rank: int | None = None) -> list[str]:
        """Rank `rank`'s last lines, or every line kept (the script's own first) when None."""
        if rank is not None:
            return self.tails.get(rank, [])
        return [line for key in sorted(self.tails, key=lambda r: -1 if r is None else r) for line in self.tails[key]]
