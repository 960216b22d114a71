"""The local backend: train on this machine (CPU, MPS or CUDA), one worker in this
process or several DDP workers started by the launcher."""

from __future__ import annotations

from pathlib import Path

from runner.backends import Plan


class LocalBackend:
    name = "local"

    def plan(self, spec, spec_path: Path, runs_dir: Path) -> Plan:
        from runner.errors import bad_input
        from runner.hardware import local_accelerator
        from runner.launch import workers_per_node

        if spec.resources.nodes > 1:
            raise bad_input(f"resources.nodes: backend local runs on this one machine; for {spec.resources.nodes} "
                            "use --backend slurm, or start `gpujob run --nnodes N --node-rank R` on each machine")
        workers = workers_per_node(spec)
        device = local_accelerator()
        details = {"device here": device}
        if spec.resources.gpu and device == "cpu":
            details["note"] = (f"no CUDA GPU here: resources.gpu {spec.resources.gpu} is ignored, "
                               f"running {workers} CPU worker(s) (resources.processes)")
        return Plan(self.name, spec, spec_path, runs_dir, world_size=workers, details=details)

    def run(self, plan: Plan) -> Path:
        from runner.launch import Topology, run_on_this_node

        return run_on_this_node(plan.spec, Topology(plan.world_size), None, plan.runs_dir)


BACKEND = LocalBackend()
