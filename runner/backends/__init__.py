"""Backends: where a job runs, behind one interface (TorchX's Scheduler and submitit's Job are
the models). Each backend is a module or package here whose `BACKEND` has

    plan(spec, spec_path, runs_dir, run_name) -> Plan  # pure: the exact request; --dry-run prints it
    submit(plan, run, detach)     # sends plan.request, records its handles; attached, follows it to the end
    status(run) -> RunState       # pending | running | finished | failed | cancelled | preempted
    logs(run, follow) -> lines    # the job's output so far (and as it comes, with follow)
    cancel(run) -> str            # stop it, letting it checkpoint first where the backend can
    fetch(run) -> str             # bring the run folder here
    resume(run, detach)           # submit it again: it continues from its last checkpoint

and each ends up running the same worker (`gpujob run`) on the same spec. A `run` is a run
folder with its submission record (runner/run_record.py), which holds the backend's handles.
Modules are imported only when their backend is used, so `gpujob --help` stays instant and a
missing SDK only matters to the backend that needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Protocol

from runner.errors import bad_input

if TYPE_CHECKING:
    from runner.runs.record import Submission
    from runner.spec.model import JobSpec
    from runner.usercode.shipping import UserCode

# The one list of backend names: the spec's `backend` field, --backend and the registry read it.
NAMES = ("local", "modal", "docker", "vast", "slurm")
AUTO = "auto"

# One vocabulary of states for every backend.
PENDING, RUNNING, FINISHED, FAILED, CANCELLED, PREEMPTED = (
    "pending", "running", "finished", "failed", "cancelled", "preempted")
LIVE = (PENDING, RUNNING)


@dataclass
class Plan:
    backend: str
    spec: "JobSpec"
    spec_path: Path
    runs_dir: Path
    run_name: str
    world_size: int
    request: object = None  # the backend's exact request: what submit sends, nothing rebuilt
    rows: list[tuple[str, str]] = field(default_factory=list)  # the request, as --dry-run prints it
    notes: list[str] = field(default_factory=list)  # said before the job starts
    code: "UserCode | None" = None  # the user's code the job needs (runner/user_code.py)
    ships_code: bool = False  # the backend sends that code with the job (a copy in job/code)

    @property
    def folder(self) -> Path:
        return self.runs_dir / self.run_name

    def describe(self) -> list[tuple[str, str]]:
        gpu = self.spec.resources.gpu or "none (cpu)"
        rows = [("backend", self.backend), ("gpu", gpu), ("world size", str(self.world_size)),
                ("run folder", str(self.folder))]
        if self.code is not None:
            how = ("shipped with the job (copied into job/code)" if self.ships_code
                   else "imported where it is (this machine)")
            rows.append(("your code", f"{self.code.describe()}; {how}"))
        return rows + self.rows + [("note", note) for note in self.notes]


@dataclass
class RunState:
    state: str
    detail: str = ""  # one line: where it runs, why it ended
    exit_code: int | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def describe(self) -> str:
        return f"{self.state}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Run:
    """A run folder and its submission record: what every lifecycle command hands a backend."""

    folder: Path
    record: "Submission"

    @property
    def handles(self) -> dict:
        return self.record.handles


class Backend(Protocol):
    name: ClassVar[str]
    folder_is_here: ClassVar[bool]  # the job writes its run folder on this machine (local, docker, slurm)
    ships_code: ClassVar[bool]  # the job runs elsewhere than this Python: the user's code goes with it

    def plan(self, spec: "JobSpec", spec_path: Path, runs_dir: Path, run_name: str) -> Plan: ...

    def submit(self, plan: Plan, run: Run, detach: bool) -> None: ...

    def status(self, run: Run) -> RunState: ...

    def logs(self, run: Run, follow: bool) -> Iterator[str]: ...

    def cancel(self, run: Run) -> str: ...

    def fetch(self, run: Run) -> str: ...

    def resume(self, run: Run, detach: bool) -> None: ...


def get_backend(name: str) -> Backend:
    if name not in NAMES:
        raise bad_input(f"--backend: '{name}' is not a backend; pick one of {AUTO}, {', '.join(NAMES)}")
    return importlib.import_module(f"runner.backends.{name}").BACKEND
