"""Backends: where a job runs. Each is a module here exposing `BACKEND`, an object with

    plan(spec, spec_path, runs_dir) -> Plan   # pure: what would be done; --dry-run prints it
    run(plan) -> Path                         # does it, and brings the run folder back

and each ends up running the same worker (`gpujob run`) on the same spec. Modules are
imported only when their backend is used, so `gpujob --help` stays instant and a
missing SDK only matters to the backend that needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runner.errors import missing_backend

if TYPE_CHECKING:
    from runner.spec import JobSpec

AVAILABLE = ("local", "modal", "docker", "vast", "slurm")


@dataclass
class Plan:
    backend: str
    spec: "JobSpec"
    spec_path: Path
    runs_dir: Path
    world_size: int
    details: dict[str, object] = field(default_factory=dict)  # backend-specific, printed by --dry-run

    def describe(self) -> list[tuple[str, str]]:
        gpu = self.spec.resources.gpu or "none (cpu)"
        rows = [("backend", self.backend), ("gpu", gpu), ("world size", str(self.world_size))]
        return rows + [(key, str(value)) for key, value in self.details.items()]


class Backend(Protocol):
    name: str

    def plan(self, spec: "JobSpec", spec_path: Path, runs_dir: Path) -> Plan: ...

    def run(self, plan: Plan) -> Path: ...


def get_backend(name: str) -> Backend:
    if name not in AVAILABLE:
        raise missing_backend(f"backend '{name}' is not available yet in this version of gpujob; "
                              f"available: {', '.join(AVAILABLE)}")
    return importlib.import_module(f"runner.backends.{name}").BACKEND
