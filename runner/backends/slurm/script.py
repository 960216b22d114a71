"""The batch script a SLURM job runs: pure, so `--dry-run` shows it and tests compare it with a
recorded file (tests/golden/). One sbatch job runs the same worker on every task of
`resources.nodes` nodes:

    srun ... python -m runner.cli run job/spec.yaml --run-dir RUN --worker --resume

`--resume` makes a requeued job (SLURM preemption) continue from its last checkpoint into the
same run folder.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from runner.run_folder import JOB_FILES
from runner.spec import JobSpec
from runner.user_code import CODE_DIR, code_fields

EXIT_CODE_FILE = "exit-code"


def sbatch_script(spec: JobSpec, run_dir: Path, python: str, workdir: Path) -> str:
    """The batch script for `spec`, writing into `run_dir` (absolute). Pure: --dry-run shows it."""
    s, tasks = spec.slurm, spec.resources.workers_per_node
    job_dir = run_dir / JOB_FILES
    options = [f"--job-name=gpujob-{spec.name}", f"--nodes={spec.resources.nodes}",
               f"--ntasks-per-node={tasks}", f"--time={math.ceil(spec.resources.timeout_minutes)}",
               f"--chdir={workdir}", f"--output={job_dir}/slurm-%j.out",
               # A preempted job goes back in the queue and --resume continues it from its checkpoint.
               "--requeue",
               # SIGTERM to the workers shortly before the time limit: they checkpoint and exit,
               # instead of being killed mid-step when it passes.
               f"--signal=TERM@{max(10, min(120, round(spec.resources.timeout_minutes * 6)), spec.train.stop_grace_s)}"]
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
             # The user's code as it was submitted (runner/user_code.py), imported before any other copy.
             *([f"export GPUJOB_CODE_PATHS={shlex.quote(str(job_dir / CODE_DIR))}"
                "${GPUJOB_CODE_PATHS:+:$GPUJOB_CODE_PATHS}"] if code_fields(spec) else []),
             # Rank 0 runs on the first node, where this script runs: its address and a free port.
             'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             f"export MASTER_PORT=$({shlex.quote(python)} -c 'import socket; s = socket.socket(); "
             "s.bind((\"\", 0)); print(s.getsockname()[1])')",
             # Each task records its worker's exit code and node: srun reports only the highest, and
             # the ranks that srun stopped after a failure exit 143, hiding the failing rank's 1.
             "srun --kill-on-bad-exit=1 --label bash -c 'trap : TERM INT; export RANK=$SLURM_PROCID "
             "LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; "
             f"\"$@\"; code=$?; echo $code $SLURMD_NODENAME > {shlex.quote(str(job_dir))}/rank-$RANK.exit; "
             "exit $code' worker "
             f"{worker}",
             "code=$?",
             f"echo $code > {shlex.quote(str(job_dir / EXIT_CODE_FILE))}",
             "exit $code", ""]
    return "\n".join(lines)
