"""A finished run as `show`, `compare` and `plan` read it: its summary, timing, spec, record,
cost and epoch records, from the files every backend hands back. Read only; nothing here
writes into a run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import GpujobError, bad_input
from runner.invocation import command
from runner.runs import record as run_record
from runner.runs.paths import COST, ENV, METRICS, SUMMARY, TIMING, RunPaths
from runner.runs.reading import DamagedFile, metrics_records, read_json, read_summary

@dataclass
class RunView:
    folder: Path
    summary: dict
    timing: dict
    spec: dict  # spec.yaml as plain data
    epochs: list[dict] = field(default_factory=list)  # metrics.jsonl's epoch records
    record: "run_record.Submission | None" = None
    cost: dict | None = None
    env: dict | None = None
    damaged: list[str] = field(default_factory=list)  # what is wrong with its other files, said by show

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def gpu(self) -> str:
        """`NVIDIA A10G x2`, `cpu (x86_64) x2`: what ran it."""
        s = self.summary
        device, name = str(s.get("device", "?")), s.get("device_name")
        shown = name if device.startswith("cuda") and name else f"{device} ({name})" if name else device
        return f"{shown} x{s.get('world_size', 1)}"

    def epoch_seconds(self) -> float | None:
        """Seconds per epoch of training and evaluation: the mean after the first epoch, which
        carries one-off costs (cuDNN's search, torch.compile), or the only one."""
        epochs = self.timing.get("epochs") or []
        steady = epochs[1:] or epochs
        if not steady:
            return None
        return sum(e.get("wall_s", 0.0) + e.get("eval_s", 0.0) for e in steady) / len(steady)

    def startup_phases(self) -> list[tuple[str, float]]:
        """(phase, seconds) from asking for the job to its first step, each as the backend and
        the job could see it; a phase nobody measured is left out, never guessed."""
        phases = self.timing.get("phases") or {}
        out = []
        record = self.record
        asked = record.last_start() if record is not None else None
        started = self.timing.get("started_at")
        if record is not None and asked is not None and started is not None:
            for event in record.events:  # what the backend saw in between (queued, instance running)
                if event.get("phase") and event.get("t") is not None and asked <= event["t"] <= started:
                    out.append((event["phase"], event["t"] - asked))
                    asked = event["t"]
            out.append(("submitted to the job's start", max(started - asked, 0.0)))
        before = 0.0
        for key, label in (("loop_entered_s", "imports"), ("dynamo_imported_s", "torch._dynamo imported"),
                           ("data_loaded_s", "data loaded"),
                           ("model_built_s", "model built"), ("first_step_s", "first step")):
            at = phases.get(key)
            if at is not None:
                out.append((label, at - before))
                before = at
        return out


def load_run(folder: Path) -> RunView:
    """A finished run (one with summary.json); exit 2 naming the folder otherwise, or naming the
    summary where it is damaged. Its other files, where damaged, are named in `damaged`."""
    folder = Path(folder)
    summary = read_summary(folder)
    if summary is None:
        if not folder.is_dir():
            raise bad_input(f"{folder}: no such run folder")
        raise bad_input(f"{folder}: the run has not finished (no {SUMMARY}); "
                        f"`{command(f'gpujob status {folder}')}` says where it stands")
    import yaml

    try:
        spec = yaml.safe_load(RunPaths(folder).spec.read_text()) or {}
    except (OSError, yaml.YAMLError):
        spec = {}
    try:
        record = run_record.read(folder) if run_record.is_run(folder) else None
    except GpujobError:  # a damaged record hides the backend's phases, nothing else
        record = None
    damaged: list[str] = []
    timing, cost, env = (_optional(folder / name, damaged) for name in (TIMING, COST, ENV))
    return RunView(folder, summary, timing or {}, spec if isinstance(spec, dict) else {}, _epochs(folder / METRICS),
                   record, cost, env, damaged)


def find_finished(run: str, runs_dir: Path) -> RunView:
    """A run given as a folder or as a name under runs_dir."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if candidate.is_dir():
            return load_run(candidate)
    raise bad_input(f"{run}: no such run folder (nor {Path(runs_dir) / str(run)})")


def _optional(path: Path, damaged: list[str]) -> dict | None:
    """A file the run can be shown without: where damaged, left out and named."""
    try:
        return read_json(path)
    except DamagedFile as err:
        damaged.append(err.message)
        return None


def _epochs(path: Path) -> list[dict]:
    return [record for record in metrics_records(path) if record.get("kind") == "epoch"]
