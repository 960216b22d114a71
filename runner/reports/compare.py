"""`gpujob compare RUN RUN ...`: finished runs side by side, the first one the baseline.

Speed is compared per epoch after the first (the first carries one-off costs), dollars per
epoch come from each run's cost.json, and DDP scaling efficiency is given where two runs
differ in their worker count and nothing else that matters for speed. When runs differ in
more than where they ran (another batch size, model, dataset), it says which fields, because
the speed figures are then not like for like.
"""

from __future__ import annotations

from runner.reports.diagnosis import shares
from runner.runs.view import RunView

# Spec fields that say where and how a job ran, not what it computed: free to differ.
WHERE = ("name", "resources", "backend", "slurm", "modal", "vast", "docker")
NOT_SPEED = ("train.log_every_steps", "train.checkpoint_every_minutes", "train.stop_on_nan",
             "train.collective_timeout_s", "train.stop_grace_s", "train.epochs", "train.max_steps", "train.seed",
             "data.root", "data.download")


def differing_fields(runs: list[RunView]) -> list[str]:
    """Dotted spec fields whose values differ between the runs, where they ran left out."""
    flat = [dict(_flatten(r.spec)) for r in runs]
    keys = sorted(set().union(*flat))
    return [k for k in keys if k.split(".")[0] not in WHERE and len({repr(f.get(k)) for f in flat}) > 1]


def _flatten(data, prefix: str = ""):
    for key, value in (data or {}).items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def compare(runs: list[RunView]) -> dict:
    differ = differing_fields(runs)
    like_for_like = not [k for k in differ if k not in NOT_SPEED]
    base = runs[0]
    rows = [_row(run, base, runs, like_for_like) for run in runs]
    return {"runs": rows, "differing_fields": differ, "like_for_like": like_for_like,
            "baseline": base.name, "damaged": [problem for run in runs for problem in run.damaged]}


def _row(run: RunView, base: RunView, runs: list[RunView], like_for_like: bool) -> dict:
    s, t = run.summary, run.timing
    per_epoch, base_epoch = run.epoch_seconds(), base.epoch_seconds()
    cost_per_epoch = total_cost = None
    if run.cost:
        total_cost = run.cost.get("estimated_usd")
        if per_epoch is not None and run.cost.get("price_per_hour_usd") is not None:
            cost_per_epoch = run.cost["price_per_hour_usd"] * per_epoch / 3600
    return {
        "run": run.name, "folder": str(run.folder), "device": s.get("device_name") or s.get("device"),
        "gpu": _gpu(run), "world_size": s.get("world_size", 1), "precision": s.get("precision"),
        "epoch_s": per_epoch, "samples_per_s": s.get("samples_per_s"),
        "speedup": base_epoch / per_epoch if per_epoch and base_epoch else None,
        "scaling_efficiency": scaling_efficiency(run, runs) if like_for_like else None,
        "time_to_first_step_s": t.get("time_to_first_step_s"), "shares": shares(t),
        "test_loss": s.get("test_loss"), "test_accuracy": s.get("test_accuracy"), "epochs": s.get("epochs"),
        "usd_per_epoch": cost_per_epoch, "usd_total": total_cost,
        "achieved_tflops": s.get("achieved_tflops"), "mfu": s.get("mfu"),
    }


def _gpu(run: RunView) -> str:
    """`A10G x2` for a GPU run (the spec's type where it asked for one), `cpu x2` otherwise."""
    s = run.summary
    asked = (run.spec.get("resources") or {}).get("gpu")
    on_gpu = str(s.get("device", "")).startswith("cuda")
    name = (asked.split(":")[0] if asked and on_gpu else None) or ("gpu" if on_gpu else str(s.get("device", "cpu")))
    return f"{name} x{s.get('world_size', 1)}"


def scaling_efficiency(run: RunView, runs: list[RunView]) -> float | None:
    """Throughput per worker against the same kind of device at the fewest workers among the runs:
    1.0 is perfect scaling. None where no run on that device has fewer workers."""
    device = run.summary.get("device_name")
    same = [r for r in runs if r.summary.get("device_name") == device]
    fewest = min(same, key=lambda r: r.summary.get("world_size", 1))
    n, m = run.summary.get("world_size", 1), fewest.summary.get("world_size", 1)
    if n == m or not fewest.summary.get("samples_per_s"):
        return None
    return (run.summary["samples_per_s"] / fewest.summary["samples_per_s"]) / (n / m)


def table(result: dict) -> list[str]:
    columns = [("run", lambda r: r["run"]), ("gpu", lambda r: r["gpu"]), ("prec", lambda r: r["precision"]),
               ("s/epoch", lambda r: _num(r["epoch_s"], "{:.2f}")),
               ("samples/s", lambda r: _num(r["samples_per_s"], "{:,.0f}")),
               ("speedup", lambda r: _num(r["speedup"], "{:.2f}x")),
               ("scaling", lambda r: _num(r["scaling_efficiency"], "{:.0%}")),
               ("1st step", lambda r: _num(r["time_to_first_step_s"], "{:.1f} s")),
               ("data/compute/allreduce/eval", _shares),
               ("test_loss", lambda r: _num(r["test_loss"], "{:.4f}")),
               ("test_acc", lambda r: _num(r["test_accuracy"], "{:.2%}")),
               ("$/epoch", lambda r: _num(r["usd_per_epoch"], "${:.4f}")),
               ("$ total", lambda r: _num(r["usd_total"], "${:.2f}"))]
    cells = [[name for name, _ in columns]] + [[get(r) for _, get in columns] for r in result["runs"]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    out.append(f"speedup: seconds per epoch against {result['baseline']}; scaling: throughput per worker against "
               "the same device at the fewest workers")
    if result["differing_fields"]:
        verdict = "speed is not like for like" if not result["like_for_like"] else "speed still compares"
        out.append(f"note: the runs differ in {', '.join(result['differing_fields'])}: {verdict}")
    out += [f"note: {problem}: its figures are left out" for problem in result.get("damaged", [])]
    return out


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _shares(row: dict) -> str:
    s = row["shares"]
    if not s:
        return "-"
    return "/".join(f"{100 * s[k]:.0f}" for k in ("data", "compute", "allreduce", "eval")) + " %"
