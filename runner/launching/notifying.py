"""Rank 0's notifications around one attempt of a job: `started` (or `resumed`) as it begins, and
how it ended (finished, pruned, failed, preempted, cancelled) from what the worker returned or raised.
Only where the job was given webhooks (runner/reports/notify.py, NOTIFY_ENV); otherwise nothing."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runner.errors import GpujobError
from runner.reports.notify import Notifier, from_environment
from runner.reports.notify_body import JobFacts, body_for
from runner.runs.paths import SUMMARY
from runner.runs.state import FINISHED, state_of_error
from runner.spec.model import JobSpec


@contextmanager
def notifications(run_dir: Path, spec: JobSpec, resuming: bool) -> Iterator[None]:
    """Around rank 0's whole attempt: the outcome is sent however the block ends, and the block's
    end waits for the sending at most FINAL_WAIT_S."""
    try:
        urls, backend = from_environment()
    except GpujobError as err:  # a damaged variable costs the notifications, never the job
        print(f"gpujob: warning: {err.message}; no notifications are sent", file=sys.stderr, flush=True)
        urls, backend = [], None
    if not urls:
        yield
        return
    notifier = Notifier(urls)
    facts = JobFacts(Path(run_dir), spec, backend, time.time())
    _send(notifier, facts, "resumed" if resuming else "started", None)
    try:
        yield
    except GpujobError as err:
        state = state_of_error(err)
        _send(notifier, facts, state.state, err.exit_code, err.message)
        raise
    except BaseException as err:
        _send(notifier, facts, "failed", 1, f"{type(err).__name__}: {err}")
        raise
    else:
        _send(notifier, facts, _ended_as(facts.run_dir), 0)
    finally:
        notifier.wait()


def _send(notifier: Notifier, facts: JobFacts, state: str, exit_code: int | None, message: str = "") -> None:
    notifier.send(state, lambda url: body_for(url, facts, state, exit_code, message))


PRUNED = "pruned"  # summary.json's stopped_by for a sweep's trial its pruner ended (runner/sweeps/trial.py)


def _ended_as(run_dir: Path) -> str:
    """finished, or pruned: a sweep's trial its pruner stopped after an epoch (exit 0 too)."""
    try:
        stopped_by = json.loads((run_dir / SUMMARY).read_text()).get("stopped_by")
    except (OSError, ValueError, AttributeError):
        return FINISHED
    return PRUNED if stopped_by == PRUNED else FINISHED
