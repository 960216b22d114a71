"""`gpujob runs`: every run under a runs folder, newest first, from what the folders hold.

It asks no service: a local run's state comes from its lock and files, a remote one's is the
state gpujob last saw (`gpujob status RUN` asks the service). Each folder costs a few small
reads (its record, summary, cost and the tail of its metrics), so a thousand runs list in a
fraction of a second (benchmarks/runs_listing.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.runs import lock as run_lock

from runner.backends.registry import known_backend
from runner.runs import record as run_record
from runner.runs.state import FINISHED, RUNNING, Run
from runner.runs.paths import METRICS, SUMMARY
from runner.runs.reading import DamagedFile, last_epoch_record, read_json, read_summary
from runner.sweeps.record import is_sweep

TAIL_BYTES = 8192  # enough for the last epoch line of metrics.jsonl
COLUMNS = ("run", "backend", "state", "gpu", "epoch", "test_acc", "wall", "cost")


def collect(runs_dir: Path) -> list[dict]:
    """Every run, newest first; a sweep's trials (run folders inside its folder) together, in their
    order, named SWEEP/TRIAL, where the sweep's newest trial puts them."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    groups: list[list[dict]] = []
    with os.scandir(runs_dir) as entries:
        for entry in entries:
            if entry.is_dir() and run_record.is_run(Path(entry.path)):
                groups.append([_row(Path(entry.path))])
            elif entry.is_dir() and is_sweep(Path(entry.path)):
                groups.append(_trial_rows(Path(entry.path)))
    groups = [group for group in groups if group]
    groups.sort(key=lambda g: (max(r["submitted_at"] or "" for r in g), g[0]["run"]), reverse=True)
    return [row for group in groups for row in group]


def _trial_rows(sweep: Path) -> list[dict]:
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and run_record.is_run(p))
    return [{**_row(trial), "run": f"{sweep.name}/{trial.name}", "sweep": sweep.name} for trial in trials]


def _row(folder: Path) -> dict:
    try:
        record = run_record.read(folder)
    except Exception:  # a damaged record is listed as such, never a reason to fail the listing
        return {"run": folder.name, "backend": "?", "state": "damaged record", "gpu": None, "world_size": None,
                "epoch": None, "epochs": None, "test_accuracy": None, "wall_s": None, "cost_usd": None,
                "submitted_at": None, "path": str(folder), "damaged": []}
    damaged: list[str] = []
    summary = _readable(lambda: read_summary(folder), damaged)
    last = last_epoch_record(folder / METRICS, TAIL_BYTES) if summary is None else None
    cost = _readable(lambda: read_json(folder / "cost.json"), damaged)
    state = "summary.json damaged" if (folder / SUMMARY).exists() and summary is None else \
        _state(folder, record, summary)
    return {"run": folder.name, "backend": record.backend, "state": state,
            "gpu": record.asks.get("gpu"), "world_size": record.asks.get("world_size"),
            "epoch": _number(summary["epochs"] if summary else (last or {}).get("epoch")),
            "epochs": record.asks.get("epochs"),
            "test_accuracy": _number((summary or last or {}).get("test_accuracy")),
            "wall_s": _number((summary or {}).get("wall_s")),
            "cost_usd": _number((cost or {}).get("estimated_usd")),
            "submitted_at": record.submitted_at or None, "path": str(folder), "damaged": damaged}


def _readable(read, damaged: list[str]):
    """What `read` returns; a damaged file is named in `damaged` and read as absent."""
    try:
        return read()
    except DamagedFile as err:
        damaged.append(err.path.name)
        return None


def _number(value):
    """A figure from a run's files, where it is one: a damaged line's text never breaks the table."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _state(folder: Path, record, summary: dict | None) -> str:
    if summary is not None:
        return FINISHED
    if run_lock.holder(folder) is not None:
        return RUNNING
    backend = known_backend(record.backend)
    if backend is not None and backend.status_needs_no_service:  # its folder says it all: ask as `status` does
        return backend.status(Run(folder, record)).state
    return record.last_state.get("state") or "unknown"


def table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["no runs here yet"]
    cells = [COLUMNS] + [(
        r["run"], r["backend"], r["state"] + "".join(f", {name} damaged" for name in r.get("damaged") or []
                                                   if name != SUMMARY),
        (f"{r['gpu']}" if r["gpu"] else "cpu") + (f" x{r['world_size']}" if r["world_size"] else ""),
        f"{r['epoch'] or 0}/{r['epochs'] or '?'}",
        f"{100 * r['test_accuracy']:.1f}%" if r["test_accuracy"] is not None else "-",
        f"{r['wall_s']:.0f} s" if r["wall_s"] is not None else "-",
        f"${r['cost_usd']:.2f}" if r["cost_usd"] is not None else "-",
    ) for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(COLUMNS))]
    return ["  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
