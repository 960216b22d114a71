"""What a notification says, read from the run folder as the job left it: run, backend, state,
exit code, epochs, the final metrics, the cost so far, the diagnosis line and the loss curve.

A Slack incoming webhook (hooks.slack.com) gets Slack's own body (`text` plus blocks: Slack
shows no image it cannot fetch from a URL, so the curve is left out there); every other
receiver gets the plain JSON body, with the loss curve as a PNG data URL.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runner.runs.paths import METRICS, PLOT, SUMMARY, TIMING
from runner.runs.reading import last_epoch_record
from runner.spec.model import JobSpec

SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
MAX_PNG_BYTES = 2_000_000  # a data URL past this would be refused by most receivers: left out


@dataclass(frozen=True)
class JobFacts:
    """What the job knows of itself that the run folder does not say."""

    run_dir: Path
    spec: JobSpec
    backend: str | None
    started_at: float  # time.time() when this attempt began


def is_slack(url: str) -> bool:
    return (urlsplit(url).hostname or "").lower() in SLACK_HOSTS


def plain_body(facts: JobFacts, state: str, exit_code: int | None, message: str = "") -> dict:
    folder = facts.run_dir
    summary = _json(folder / SUMMARY) or {}
    last_epoch = last_epoch_record(folder / METRICS)
    done = summary.get("epochs") or (last_epoch or {}).get("epoch") or 0
    return {
        "event": state, "run": folder.name, "name": facts.spec.name, "backend": facts.backend, "state": state,
        "exit_code": exit_code, "message": message or None,
        "epochs": {"done": done, "total": facts.spec.train.epochs},
        "metrics": _final_metrics(summary, last_epoch),
        "cost_so_far_usd": _cost_so_far(facts, folder),
        "diagnosis": _diagnosis_line(summary),
        "stopped_by": summary.get("stopped_by"),  # epochs, max_steps, target, pruned, ...
        "device": summary.get("device_name") or summary.get("device"),
        "wall_s": summary.get("wall_s"),
        "loss_curve_png": _png_data_url(folder / PLOT) if state not in ("started", "resumed") else None,
        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def slack_body(plain: dict) -> dict:
    """Slack's incoming-webhook body: `text` (the notification's one line) and a section of fields."""
    head = f"gpujob: {plain['run']} {plain['state']}" + (f" (exit {plain['exit_code']})"
                                                       if plain["exit_code"] not in (None, 0) else "")
    fields = [f"*backend* {plain['backend'] or 'unknown'}", f"*epochs* {plain['epochs']['done']}/{plain['epochs']['total']}"]
    fields += [f"*{key}* {_shown(value)}" for key, value in plain["metrics"].items() if not isinstance(value, dict)]
    if plain["cost_so_far_usd"] is not None:
        fields.append(f"*cost so far* ${plain['cost_so_far_usd']:.2f}")
    lines = [line for line in (plain["message"], plain["diagnosis"]) if line]
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{head}*"}},
                          {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields[:10]]}]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": line[:2900]}} for line in lines]
    return {"text": head, "blocks": blocks}


def body_for(url: str, facts: JobFacts, state: str, exit_code: int | None, message: str = "") -> dict:
    plain = plain_body(facts, state, exit_code, message)
    return slack_body(plain) if is_slack(url) else plain


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _final_metrics(summary: dict, last_epoch: dict | None) -> dict:
    source = summary or last_epoch or {}
    picked = {key: source.get(key) for key in ("train_loss", "loss", "test_loss", "test_accuracy")
              if source.get(key) is not None}
    for key in ("metrics", "test_metrics"):
        if source.get(key):
            picked[key] = source[key]
    return picked


def _cost_so_far(facts: JobFacts, folder: Path) -> float | None:
    """The GPU's list price on this backend x the time this attempt ran (not the bill); None on
    hardware nobody rents out by the hour (local, Docker, SLURM) or at a market price (vast.ai)."""
    request = facts.spec.resources.gpu_request
    price = request.type.price_per_hour.get(facts.backend or "") if request else None
    if request is None or not price:
        return None
    timing = _json(folder / TIMING) or {}
    seconds = timing.get("total_s") or (time.time() - facts.started_at)
    return round(price * request.count * seconds / 3600, 4)


def _diagnosis_line(summary: dict) -> str | None:
    findings = summary.get("diagnosis") or []
    first = findings[0] if findings and isinstance(findings[0], dict) else None
    return f"{first['kind']}: {first['evidence']}; {first['change']}" if first else None


def _png_data_url(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode() if len(data) <= MAX_PNG_BYTES else None


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
