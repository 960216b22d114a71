"""A run's records as the lines people read: a step, an epoch, a test result, a summary; and a
run's metrics.jsonl as the progress lines its job printed (how `logs` shows an attached run)."""

from __future__ import annotations

from pathlib import Path

from runner.errors import last_error_line
from runner.runs.paths import METRICS, SUMMARY, RunPaths
from runner.runs.reading import metrics_records, whole_summary


def test_result(r: dict, sep: str = "  ") -> str:
    """The test split's result in a record or a summary: accuracy (the default step) or a user
    step's named values, then the loss."""
    parts = [f"test_accuracy {100 * r['test_accuracy']:.2f}%"] if r.get("test_accuracy") is not None else []
    parts += [f"test_{name} {value:.4g}" for name, value in (r.get("test_metrics") or {}).items()]
    return sep.join(parts + [f"test_loss {r['test_loss']:.4f}"])


def named_values(r: dict) -> str:
    """A user step's named training values in a record, as `  name value ...` (empty without)."""
    return "".join(f"  {name} {value:.4g}" for name, value in (r.get("metrics") or {}).items())


def epoch_line(r: dict, epochs: int | None = None) -> str:
    of = f"/{epochs}" if epochs else ""
    return (f"epoch {r['epoch']}{of}  train_loss {r['loss']:.4f}{named_values(r)}  {test_result(r)}  "
            f"{r['samples_per_s']:.0f} samples/s  {r['wall_s']:.1f} s{stopped_by(r)}")


def epoch_from_line(line: str) -> dict | None:
    """An epoch record from the line epoch_line printed (a remote job's output, where its
    metrics.jsonl is not here while it runs), to the printed precision; None for any other line."""
    parts = line.strip().split("  ")
    head = parts[0].split(" ")
    if len(head) != 2 or head[0] != "epoch" or len(parts) < 3 or not parts[1].startswith("train_loss "):
        return None
    try:
        record: dict = {"kind": "epoch", "epoch": int(head[1].split("/")[0]), "metrics": {}, "test_metrics": {}}
    except ValueError:
        return None
    for part in parts[1:]:
        name, _, text = part.partition(" ")
        try:
            _put(record, name, float(text.rstrip("%")) / (100 if text.endswith("%") else 1))
        except ValueError:
            continue  # the rate, the time, a stop rule's words
    return record


def _put(record: dict, name: str, value: float) -> None:
    if name == "train_loss":
        record["loss"] = value
    elif name in ("test_loss", "test_accuracy"):
        record[name] = value
    elif name.startswith("test_"):
        record["test_metrics"][name.removeprefix("test_")] = value
    else:
        record["metrics"][name] = value


def stopped_by(r: dict) -> str:
    """An epoch record's stop rule, as `  target met: stopping`, or the target's prediction (empty
    when there is neither)."""
    reason = r.get("stopped_by")
    if reason:
        return "  target met: stopping" if reason == "target" else f"  stopping: {reason}"
    return f"  {prediction_text(r['prediction'])}" if r.get("prediction") else ""


def prediction_text(p: dict) -> str:
    """`target ~epoch 7 (6-9), ~12 s, ~$0.01 more`: when the fit says the target will be met."""
    spread = f" ({p['low']}-{p['high']})" if p["low"] != p["high"] else ""
    money = f", ~${p['usd']:.2f}" if isinstance(p.get("usd"), (int, float)) else ""
    past = "" if p.get("within_epochs", True) else ", past train.epochs"
    return f"target ~epoch {p['epoch']}{spread}{past}, ~{p['seconds']:.0f} s{money} more"


def target_line(s: dict) -> str | None:
    """A summary's account of its train.stop_when; None without one."""
    if not s.get("target"):
        return None
    if not s.get("target_met"):
        return f"target: {s['target']} not met in {s.get('epochs')} epoch(s)"
    usd = f", ${s['target_usd']:.2f}" if isinstance(s.get("target_usd"), (int, float)) else ""
    return f"target: {s['target']} met at epoch {s.get('target_epoch')} ({s.get('target_wall_s', 0):.1f} s{usd})"


def latest_prediction(folder: Path) -> str | None:
    """The target's prediction at the run's last epoch so far (metrics.jsonl), as a line; None
    without one."""
    epochs = [r for r in metrics_records(Path(folder) / METRICS) if r.get("kind") == "epoch"]
    if not epochs or not isinstance(epochs[-1].get("prediction"), dict):
        return None
    try:
        return f"after epoch {epochs[-1]['epoch']}: {prediction_text(epochs[-1]['prediction'])}"
    except (KeyError, TypeError, ValueError):
        return None  # a record lacking what the line shows


def step_line(r: dict, total: int | None = None) -> str:
    of = f"/{total}" if total else ""
    return (f"step {r['step']}{of}  epoch {r['epoch']}  loss {r['loss']:.4f}{named_values(r)}  "
            f"lr {r['lr']:.3g}  {r['samples_per_s']:.0f} samples/s")


def summary_line(folder: Path) -> str:
    s = whole_summary(folder)
    if s is None:
        return f"{SUMMARY} is damaged"
    try:
        return (f"{test_result(s, ', ')}, {s['epochs']} epoch(s) in {s['wall_s']:.1f} s on {s['device']} "
                f"x{s['world_size']}")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{SUMMARY} is damaged"


def error_line(folder: Path) -> str:
    """The error a failed run is remembered by (error.log's), naming the file; "" without one."""
    path = RunPaths(folder).error_log
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return last_error_line(lines) + f" (see {path})"


def progress_lines(folder: Path) -> list[str]:
    """metrics.jsonl as the progress lines the job printed (step and epoch lines)."""
    lines = []
    for record in metrics_records(Path(folder) / METRICS):  # a line that is not a record is left out
        try:
            lines.append(epoch_line(record) if record.get("kind") == "epoch" else step_line(record))
        except (KeyError, TypeError, ValueError):
            continue  # a record lacking what a progress line shows
    error = error_line(folder)
    if error:
        lines.append(f"gpujob: {error}")
    return lines
