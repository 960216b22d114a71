"""The local backend: train on this machine, in this process (CPU, MPS or CUDA)."""

from __future__ import annotations

from pathlib import Path

from runner.backends import Plan


class LocalBackend:
    name = "local"

    def plan(self, spec, spec_path: Path, runs_dir: Path) -> Plan:
        from runner.hardware import local_accelerator

        return Plan(self.name, spec, spec_path, runs_dir, world_size=1,
                    details={"device here": local_accelerator()})

    def run(self, plan: Plan) -> Path:
        from runner.worker import run_worker

        return run_worker(plan.spec, runs_dir=plan.runs_dir)


BACKEND = LocalBackend()
