"""A sweep's trials on SLURM: one job array, `--array=0-K%P`, one task per trial and at most P
(sweep.max_parallel) at once. Each task runs `gpujob sweep work SWEEP`, which claims trials in turn
until none is left: a task that starts while trials remain trains several of them in one process
(its start-up paid once), and one that starts after they are all taken ends at once.

Pure where it can be: `array_script` is the exact script sbatch reads (the dry run could print it);
the sweep folder, on a file system the nodes share, holds sweep.json, the trials and the output.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

from runner.backends.slurm.commands import require_controller, sbatch, slurm_command
from runner.backends.slurm.script import check_path, resource_options, sbatch_quote
from runner.runs.files import atomic_write
from runner.spec.model import JobSpec

ARRAY_SCRIPT = "sweep.sbatch"  # in the sweep folder's job/


def array_script(spec: JobSpec, sweep_dir: Path, trials: int, parallel: int, python: str, workdir: Path) -> str:
    s = spec.slurm
    job_dir = sweep_dir / "job"
    rounds = math.ceil(trials / max(parallel, 1))  # the most trials one task may train in turn
    options = [f"--job-name=gpujob-sweep-{spec.name}", f"--array=0-{trials - 1}%{parallel}", "--ntasks=1",
               f"--time={math.ceil(spec.resources.timeout_minutes * rounds) + 1}",
               f"--chdir={sbatch_quote(str(workdir))}",
               f"--output={sbatch_quote(str(job_dir).replace('%', '%%') + '/slurm-%A_%a.out')}"]
    options += resource_options(spec)
    work = shlex.join([python, "-m", "runner.cli", "sweep", "work", str(sweep_dir)])
    return "\n".join(["#!/bin/bash", *(f"#SBATCH {option}" for option in options), "",
                      "# Written by gpujob sweep (backend: slurm): each task trains the sweep's trials in turn.",
                      "set -uo pipefail", *s.setup,
                      "export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
                      # the workers stop on SIGTERM (scancel --signal=TERM) with a checkpoint: exec, so they get it
                      f"exec {work}", ""])


def submit_array(spec: JobSpec, sweep_dir: Path, trials: int, parallel: int) -> dict:
    """sbatch the array; the handles to record in sweep.json."""
    sweep_dir = sweep_dir.resolve()
    check_path(sweep_dir, "--runs-dir")
    require_controller()
    script = array_script(spec, sweep_dir, trials, parallel, spec.slurm.python or sys.executable, Path.cwd())
    (sweep_dir / "job").mkdir(exist_ok=True)
    path = sweep_dir / "job" / ARRAY_SCRIPT
    atomic_write(path, script.encode())
    return {"slurm_job_id": sbatch(path)}


def array_tasks(handles: dict) -> list[str]:
    """The states of the array's tasks SLURM still runs or holds (PENDING, RUNNING, ...); [] once it ended."""
    job = handles["slurm_job_id"]
    shown = slurm_command(["squeue", "--noheader", "--array", "--jobs", job, "--format=%T"], "following the sweep")
    if shown.returncode != 0:
        return []  # "Invalid job id": it ended and SLURM has forgotten it
    return [line.strip() for line in shown.stdout.splitlines() if line.strip()]


def stop_array(handles: dict) -> None:
    """Pending tasks dropped; running ones sent SIGTERM (their trials checkpoint and end)."""
    job = handles["slurm_job_id"]
    slurm_command(["scancel", "--state=PENDING", job], "cancelling the sweep's waiting tasks")
    slurm_command(["scancel", "--signal=TERM", "--full", job], "stopping the sweep's running tasks")
