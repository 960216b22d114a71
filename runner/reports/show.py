"""`gpujob show RUN`: one screen on one finished run: what it was, what it reached, how fast,
where its start-up and its epochs' time went, what it cost, and the diagnosis."""

from __future__ import annotations

from pathlib import Path

from runner.reports.diagnosis import diagnose, lines, shares
from runner.runs.lines import target_line, test_result
from runner.runs.view import RunView
from runner.runs.reading import read_summary


def show_lines(run: RunView) -> list[tuple[str, str]]:
    s, t = run.summary, run.timing
    rows = [("run", f"{run.name}" + (f" ({run.record.backend})" if run.record else "")),
            ("model", f"{s.get('model')} on {s.get('dataset')}, {s.get('parameters', 0):,} parameters, batch "
                      f"{s.get('global_batch_size')} global ({s.get('local_batch_size')} per worker)"),
            ("device", f"{run.gpu}, {s.get('precision')}"),
            ("result", f"{test_result(s)}  train_loss {s['train_loss']:.4f} after {s.get('epochs')} epoch(s), "
                       f"{s.get('steps')} steps"),
            ("speed", speed(run))]
    if s.get("peak_memory_bytes"):
        where = "the GPU's allocator peak" if s.get("device", "").startswith("cuda") else "peak RSS of rank 0"
        rows.append(("peak memory", f"{s['peak_memory_bytes'] / 2**20:,.0f} MiB ({where})"))
    if s.get("utilisation"):
        rows.append(("utilisation", utilisation_line(s["utilisation"])))
    rows.append(("wall time", f"{s.get('wall_s', 0):.1f} s in all" + (f", resumed {s['resumed']}x" if s.get("resumed")
                                                                       else "")))
    phases = run.startup_phases()
    if phases:
        first = t.get("time_to_first_step_s")
        rows.append(("start-up", (f"{first:.1f} s to the first step: " if first else "")
                     + ", ".join(f"{name} {secs:.1f} s" for name, secs in phases)))
    if t.get("compile_s"):
        rows.append(("compile", f"{t['compile_s']:.1f} s building the compiled model (first step)"))
    share = shares(t)
    if share:
        rows.append(("epoch time", breakdown(share)))
    if run.cost:
        rows.append(("cost", cost_line(run.cost)))
    for i, line in enumerate(lines(diagnose(s, t, run.spec, run.env))):
        rows.append(("diagnosis" if i == 0 else "", line))
    for i, problem in enumerate(run.damaged):  # left out above; said, not silently dropped
        rows.append(("damaged" if i == 0 else "", problem))
    rows.append(("folder", str(run.folder)))
    return rows


def utilisation_line(u: dict) -> str:
    """summary.json's `utilisation` (runner/training/sampler.py) in one line."""
    what = "the GPU(s) busy" if u.get("device") == "cuda" else "rank 0's CPU threads busy"
    parts = [f"{what} {u['mean_util_percent']:.0f}% on average" if u.get("mean_util_percent") is not None else what]
    parts[0] += f" ({u.get('samples')} samples, utilisation.jsonl)"
    if u.get("peak_memory_used_bytes"):
        parts.append(f"peak {u['peak_memory_used_bytes'] / 2**30:.1f} GiB used")
    if u.get("energy_j") is not None:
        parts.append(f"{u['energy_j'] / 3.6e6:.3f} kWh ({u['energy_j']:,.0f} J)")
    if u.get("throttled_samples"):
        parts.append(f"clocks held back in {u['throttled_samples']} sample(s)")
    return ", ".join(parts)


def speed(run: RunView) -> str:
    s = run.summary
    per_epoch = run.epoch_seconds()
    parts = [f"{per_epoch:.2f} s per epoch" if per_epoch is not None else "no epoch timed",
             f"{s.get('samples_per_s', 0):,.0f} samples/s"]
    if s.get("achieved_tflops") is not None:
        parts.append(f"{s['achieved_tflops']:.3g} TFLOP/s achieved")
    if s.get("mfu") is not None:
        parts.append(f"MFU {s['mfu']:.1%} of {s['peak_tflops_per_device']:g} TFLOP/s per device")
    return ", ".join(parts)


def breakdown(share: dict) -> str:
    return (f"data {share['data']:.0%}, compute {share['compute']:.0%}, eval {share['eval']:.0%}; "
            f"all-reduce in flight {share['allreduce']:.0%} (overlaps compute)")


def cost_line(cost: dict) -> str:
    line = f"about ${cost['estimated_usd']:.2f} ({cost['rented']} at ${cost['price_per_hour_usd']:.2f}/h)"
    before = cost.get("estimated_before_run")
    if before and before.get("total_usd") is not None:
        line += f"; estimated before the run: ${before['total_usd']:.2f}"
    return line


def done_lines(folder: Path) -> list[str]:
    """What a submit, resume or fetch that waited for the run prints at its end: the result and
    what held the run back. [] without a summary; a damaged one is DamagedFile (exit 2, one line)."""
    s = read_summary(folder)
    if s is None:
        return []
    out = [f"done: {test_result(s)}  {s['wall_s']:.1f} s on {s.get('device')} x{s.get('world_size')}"]
    out += [line for line in [target_line(s)] if line]
    for finding in s.get("diagnosis") or []:  # what held it back, and the change to make
        if isinstance(finding, dict):
            out.append(f"diagnosis: {finding.get('kind')}: {finding.get('evidence')}; {finding.get('change')}")
    return out
