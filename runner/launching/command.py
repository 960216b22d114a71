"""The worker command every backend's job runs, built in this one place:

    python -m runner.cli run SPEC --run-dir DIR [--nproc-per-node N] [--worker] [--resume]

A backend only decides where it runs and with which Python: on this machine (local), after an
image's entrypoint `gpujob run` (docker), as each task of a SLURM job (`--worker`: srun starts
the ranks). The launcher's own per-rank command is its own (runner/launching/launcher.py).

Imports nothing of gpujob.
"""

from __future__ import annotations

import sys
from pathlib import Path

ENTRY = ["-m", "runner.cli", "run"]  # what the image's entrypoint `gpujob run` stands for


def run_arguments(spec_file: str | Path, run_dir: str | Path, nproc_per_node: int | str | None = None,
                  resume: bool = False, worker: bool = False) -> list[str]:
    """The arguments after `gpujob run`: the spec, the run folder, how many workers (None: the
    command's default), `--worker` for one rank started by someone else, `--resume` to continue
    a run the folder holds (what a restarted machine or a requeued job needs)."""
    return [str(spec_file), "--run-dir", str(run_dir),
            *(["--nproc-per-node", str(nproc_per_node)] if nproc_per_node is not None else []),
            *(["--worker"] if worker else []), *(["--resume"] if resume else [])]


def run_command(spec_file: str | Path, run_dir: str | Path, nproc_per_node: int | str | None = None,
                resume: bool = False, worker: bool = False, python: str = sys.executable) -> list[str]:
    """`python -m runner.cli run ...` with `python` (by default, this one)."""
    return [python, *ENTRY, *run_arguments(spec_file, run_dir, nproc_per_node, resume, worker)]
