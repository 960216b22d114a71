"""Past Modal's 24 hours: a job longer than one Modal call runs as a chain of calls.

Modal ends a call at its timeout, at most 24 h (CALL_LIMIT_S). A job whose
resources.timeout_minutes (plus the start-up grace) is longer runs as a chain, all in the
container, so it needs no terminal: each call stops its own training shortly before its limit
(a timer sends this process the SIGTERM the training loop answers with a checkpoint), commits
the volume, and spawns its successor with the same arguments and options; the successor resumes
from the checkpoint on the volume, as a retry does. The call returns {"exit_code": 0,
"next_call": ID}, which is how the client follows the chain to its last call (service.py); and
each attempt of each call adds its times to CALLS_LOG in the run folder, which cost.json sums.

The chain is one submission (one `submission` id), so resources.timeout_minutes, the budget's
meter and Modal's retries hold across all its calls as they do across one call's attempts.

What this relies on (read in the installed SDK, modal/_functions.py, and Modal's docs):
- a function may spawn a function of its own app from inside its container:
  Function.with_options' docstring, "From a local entrypoint or another Function:
  fn.with_options(gpu=...).remote()";
- FunctionCall.from_id(id) finds a call spawned anywhere, the successor included ("Instantiate a
  FunctionCall object from an existing ID");
- a detached app "keeps running even after the client exits"
  (https://modal.com/docs/guide/apps); the successor is spawned while its predecessor's input
  is still running, so the app has a live input at every moment of the chain. Not observed on
  Modal itself here (no network): tests/modal_standin.py serves the spawn as a new call.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.backends.modal.request import TIMEOUT_GRACE_S, call_limit_s, is_chained, modal_request

CALLS_LOG = "modal_calls.jsonl"  # in the run folder: one line per attempt of a chained call
STOP_POLL_S = 0.5
# In the run's job/ on the volume: one file per handover, SUBMISSION-N, holding the id of the
# submission's Nth next call; how the client finds the chain's calls once Modal no longer keeps a
# call's result (which names its successor). A file of its own: no later call rewrites it.
HANDOVERS = "modal-handovers"
# In the run's job/ on the volume (which fetch does not copy back): the job's own code, which the
# first call's image carries and the later calls, spawned from the container with gpujob's image
# alone (a function made per job cannot be called from another container), read from here.
KEPT_CODE = "modal-code"


def handover_margin_s(limit_s: float) -> float:
    """How long before its limit a call stops training: the save, the volume's commit and the
    successor's spawn (TIMEOUT_GRACE_S of a 24 h call; a third of a test's few seconds)."""
    return min(TIMEOUT_GRACE_S, limit_s / 3)


@dataclass
class Handover:
    """This call's timer: at its window's end it sends this process SIGTERM, once the job has
    set its handler for it (before that, it is still starting: it waits; whatever handled SIGTERM
    when the call began, Modal's runtime or the default, is not the job's checkpoint)."""

    window_s: float
    step_at_start: int
    before: object = field(default_factory=lambda: signal.getsignal(signal.SIGTERM))
    fired: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    logged: bool = False  # this attempt's line is in CALLS_LOG

    def start(self) -> Handover:
        threading.Thread(target=self._run, daemon=True, name="gpujob-modal-handover").start()
        return self

    def _run(self) -> None:
        if self.done.wait(self.window_s):
            return
        while not self._jobs_handler():  # the job still starts
            if self.done.wait(STOP_POLL_S):
                return
        self.fired.set()
        os.kill(os.getpid(), signal.SIGTERM)  # the training loop's stop: a checkpoint, then PREEMPTED

    def _jobs_handler(self) -> bool:
        handler = signal.getsignal(signal.SIGTERM)
        return callable(handler) and handler is not self.before

    def cancel(self) -> None:
        self.done.set()


def handover_for(spec, run_dir: Path, used_s: float) -> Handover | None:
    """A timer for this call where the job may outlast it; None where the job ends within it."""
    if not is_chained(spec):
        return None
    limit = call_limit_s()
    window = limit - handover_margin_s(limit)
    if spec.resources.timeout_minutes * 60 - used_s <= window:
        return None  # the job's own time limit ends it within this call
    return Handover(window, newest_step(run_dir)).start()


def newest_step(run_dir: Path) -> int:
    from runner.runs.paths import RunPaths, checkpoint_step

    newest = RunPaths(run_dir).newest_checkpoint()
    return -1 if newest is None else checkpoint_step(newest)


def successor_request(spec, run_name: str, submission: str):
    """The request this call was spawned with, rebuilt in the container: the options from the
    spec as the client built them, this submission's id, and the meter's variables and the
    webhooks' secret from this container's environment (the same submission: the same clock)."""
    from runner.training.meter import from_env

    meter = from_env()
    return replace(modal_request(spec, run_name), submission=submission, billing=meter.env() if meter else {})


def calls_so_far(run_dir: Path, submission: str) -> int:
    """How many calls of this submission have handed over: this call's place in its chain."""
    return len({entry["call"] for entry in read_calls_log(run_dir)
                if entry.get("submission") == submission and entry.get("handed_over")})


def log_attempt(run_dir: Path, submission: str, call: int, began: float, handed_over: bool,
                replace_last: bool = False) -> None:
    """Add this attempt's line (or put it in place of the last: a handover whose spawn failed)."""
    from runner.runs.files import atomic_write

    entries = read_calls_log(run_dir)[:-1] if replace_last else read_calls_log(run_dir)
    entries.append({"submission": submission, "call": call, "began": began, "ended": time.time(),
                    "handed_over": handed_over})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CALLS_LOG, "".join(json.dumps(e) + "\n" for e in entries).encode())


def read_calls_log(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / CALLS_LOG).read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def billed_calls(run_dir: Path, call_ids: list[str]) -> list[dict] | None:
    """The latest submission's calls, each with its attempts' seconds; None where it was not chained.
    `call_ids`: the run's calls as its record lists them, the latest last."""
    entries = read_calls_log(run_dir)
    if not entries:
        return None
    latest = [e for e in entries if e["submission"] == entries[-1]["submission"]]
    count = max(e["call"] for e in latest) + 1
    ids = call_ids[-count:] if len(call_ids) >= count else [None] * count
    return [{"call_id": ids[k], "billed_s": round(sum(e["ended"] - e["began"] for e in latest if e["call"] == k), 1)}
            for k in range(count)]


def record_handover(run_dir: Path, submission: str, place: int, next_call: str) -> None:
    """Call number `place` of the submission handed the job to `next_call`."""
    from runner.runs.files import atomic_write

    folder = run_dir / "job" / HANDOVERS
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{submission}-{place + 1}", next_call.encode())


def handover_file(run_name: str, submission: str, place: int) -> str:
    """Where the volume keeps the id of the submission's call number `place` (record_handover)."""
    return f"{run_name}/job/{HANDOVERS}/{submission}-{place}"


def kept_code(run_dir: Path) -> Path:
    return run_dir / "job" / KEPT_CODE


def keep_code(mounted: Path, run_dir: Path) -> None:
    """The job's code, where its image carries it, kept on the volume for the chain's next calls
    (once: a later call reads it from there). Copied beside, then renamed: whole or absent."""
    import shutil

    kept = kept_code(run_dir)
    if not mounted.is_dir() or kept.is_dir():
        return
    partial = kept.with_name(KEPT_CODE + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(mounted, partial)
    partial.rename(kept)
