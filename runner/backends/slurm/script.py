"""The batch script a SLURM job runs: pure, so `--dry-run` shows it and tests compare it with a
recorded file (tests/golden/). One sbatch job runs the same worker on every task of
`resources.nodes` nodes:

    srun ... python -m runner.cli run job/spec.yaml --run-dir RUN --worker --resume

(runner/launching/command.py builds that command, as for every backend.) `--resume` makes a requeued job (SLURM preemption) continue from its last checkpoint into the
same run folder.

What the job leaves in the run's job/ for gpujob to read (runner/backends/slurm/outcome.py):
`rank-N.exit`, one line per task, "CODE NODE ENDED SIGNALS" (the worker's exit code, the node,
when it ended, the signals its task got), `rank-N.error.json`, the record a failing worker
leaves (GPUJOB_JOB_DIR tells it where), and `exit-code`, "CODE ATTEMPT" (srun's exit code and
which start of the job wrote it: a requeued job starts again).
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from runner.errors import bad_input
from runner.launching.blame import RECORD_GLOB
from runner.launching.command import run_command
from runner.runs.paths import JOB_EXIT_CODE, RunPaths
from runner.spec.model import JobSpec
from runner.usercode.shipping import CODE_DIR, code_fields

EXIT_CODE_FILE = JOB_EXIT_CODE  # "CODE ATTEMPT" here: the batch script's own
# SLURM's warning before the time limit (--signal): the signal the workers already take for
# resources.timeout_minutes (runner/training/stops.py), not SIGTERM, which is a preemption or a cancel.
TIME_LIMIT_SIGNAL = "ALRM"
# What each task's shell does around the worker (its command is "$@"). The shell traps the
# signals a stop sends, so that it outlives the worker and notes which ones came; EPOCHREALTIME
# (bash 5; `date` before) is taken the moment the worker ended: which rank ended first decides
# which failure ended the job, whatever order the files appear in.
TASK = ("got=; for s in TERM INT " + TIME_LIMIT_SIGNAL + "; do trap \"got=\\${got}$s,\" $s; done; "
        "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
        "LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; "
        "\"$@\"; code=$? ended=${EPOCHREALTIME:-$(date +%s.%N)}; "
        "echo $code $SLURMD_NODENAME $ended ${got:--} > \"$GPUJOB_JOB_DIR/rank-$RANK.exit\"; exit $code")
# #SBATCH values that need no quotes (sbatch splits its lines at white space, and `#` starts a comment).
PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def sbatch_script(spec: JobSpec, run_dir: Path, python: str, workdir: Path) -> str:
    """The batch script for `spec`, writing into `run_dir` (absolute). Pure: --dry-run shows it."""
    s, tasks = spec.slurm, spec.resources.workers_per_node
    paths = RunPaths(run_dir)
    job_dir = paths.job
    # Quoted as sbatch reads its lines; `%` doubled: --output is a pattern (%j: the job id).
    output = sbatch_quote(str(job_dir).replace("%", "%%") + "/slurm-%j.out")
    options = [f"--job-name=gpujob-{spec.name}", f"--nodes={spec.resources.nodes}",
               f"--ntasks-per-node={tasks}", f"--time={math.ceil(spec.resources.timeout_minutes)}",
               f"--chdir={sbatch_quote(str(workdir))}", f"--output={output}",
               # A preempted job goes back in the queue and --resume continues it from its checkpoint.
               "--requeue",
               # The time limit's signal to the workers shortly before it passes: they checkpoint
               # and exit 1 as at their own limit, instead of being killed mid-step when it passes.
               f"--signal={TIME_LIMIT_SIGNAL}@{warning_s(spec)}"]
    options += resource_options(spec)
    # each task one rank (`--worker`: srun starts them all); `--resume` for a requeued job
    worker = shlex.join(run_command(paths.job_spec, run_dir, worker=True, resume=True, python=python))
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options), "",
             "# Written by gpujob (backend: slurm); submitted with sbatch from the run folder's job/.",
             "set -uo pipefail",
             # A trapped signal waits for srun to end (the workers checkpoint on SIGTERM), so the
             # exit code below is still written; an ignored one would be inherited by the workers.
             "trap ':' TERM INT",
             f"export GPUJOB_JOB_DIR={shlex.quote(str(job_dir))}",
             # an earlier start's ends and error records (a failing worker's, runner/launching/blame.py)
             f'rm -f "$GPUJOB_JOB_DIR/{EXIT_CODE_FILE}" "$GPUJOB_JOB_DIR"/rank-*.exit "$GPUJOB_JOB_DIR"/{RECORD_GLOB}',
             *s.setup,
             "export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
             # srun takes --cpus-per-task from sbatch only before SLURM 22.05; since, where tasks are
             # bound to CPUs, each would get one while OMP_NUM_THREADS starts several threads.
             'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi',
             # The user's code as it was submitted (runner/usercode/shipping.py), imported before any other copy.
             *([f"export GPUJOB_CODE_PATHS={shlex.quote(str(job_dir / CODE_DIR))}"
                "${GPUJOB_CODE_PATHS:+:$GPUJOB_CODE_PATHS}"] if code_fields(spec) else []),
             # Rank 0 runs on the first node, where this script runs: its address and a free port.
             'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             f"export MASTER_PORT=$({shlex.quote(python)} -c 'import socket; s = socket.socket(); "
             "s.bind((\"\", 0)); print(s.getsockname()[1])')",
             # Each task records how its worker ended (TASK): srun reports only the highest exit
             # code, and the ranks that srun stopped after a failure exit 143, hiding the failing one's.
             f"srun --kill-on-bad-exit=1 --label bash -c {shlex.quote(TASK)} worker {worker}",
             # Which start of the job this is: a requeued job's restart may fail before this script
             # runs, and the exit code on disk is then an earlier start's.
             "code=$?",
             f'echo $code ${{SLURM_RESTART_COUNT:-0}} > "$GPUJOB_JOB_DIR/{EXIT_CODE_FILE}"',
             "exit $code", ""]
    return "\n".join(lines)


def warning_s(spec: JobSpec) -> int:
    """Seconds before the time limit that the workers are told to stop: a tenth of the limit,
    10 s to 2 min, and at least the time they have to checkpoint (train.stop_grace_s)."""
    return max(10, min(120, round(spec.resources.timeout_minutes * 6)), spec.train.stop_grace_s)


def sbatch_quote(value: str) -> str:
    """`value` as one word of an #SBATCH line: sbatch splits at white space, ends the line at an
    unquoted `#`, and takes `"..."` and backslash escapes (its opt.c, _get_argument)."""
    if PLAIN.fullmatch(value):
        return value
    return '"' + re.sub(r'([\\"#])', r"\\\1", value) + '"'


def check_path(path: Path, what: str) -> None:
    """A folder the batch script names: a newline would end its line, and a backslash in
    --output turns off SLURM's %j, so the job's output could not be found."""
    if "\n" in str(path) or "\\" in str(path):
        raise bad_input(f"{what}: {str(path)!r} holds a newline or a backslash, which a SLURM batch script "
                        "cannot carry in its #SBATCH lines; use a folder without them")


def resource_options(spec: JobSpec) -> list[str]:
    """The #SBATCH options from the spec's GPUs and slurm: section (gres, partition, account,
    qos, cpus, memory, the user's own lines): the same for a job and a sweep's array."""
    s = spec.slurm
    options = []
    request = spec.resources.gpu_request
    if request:
        kind = f"{s.gres_type}:" if s.gres_type else ""
        options.append(f"--gres=gpu:{kind}{request.count}")
    for flag, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                        ("cpus-per-task", s.cpus_per_task), ("mem", s.mem)):
        if value is not None:
            options.append(f"--{flag}={sbatch_quote(str(value))}")
    return options + list(s.sbatch_lines)
