"""submission.json: the record that makes a folder a gpujob run, written before anything else.

It names the backend that runs the job and that backend's handles (a pid, a container, a
SLURM job id, a Modal call id, a vast.ai instance id and label), when the job was submitted
and from where, what it asks for (for `gpujob runs`, without reading the spec), the state
gpujob last saw, and what was done to it (submitted, cancel asked, resumed). `status`,
`logs`, `cancel`, `fetch` and `resume` start from it. It never holds a credential: handles are
ids, never tokens.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner.errors import bad_input
from runner.runs.files import atomic_write
from runner.runs.paths import RECORD

FORMAT = 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Submission:
    backend: str
    run: str  # the run folder's name (also its name on a Modal volume or a vast.ai disk)
    submitted_at: str = field(default_factory=now)
    submitted_from: dict = field(default_factory=dict)  # host, user, cwd, spec
    asks: dict = field(default_factory=dict)  # gpu, world_size, epochs: what `gpujob runs` shows
    detached: bool = False
    handles: dict = field(default_factory=dict)
    last_state: dict = field(default_factory=dict)  # {"state", "at", "detail"} as gpujob last saw it
    events: list = field(default_factory=list)  # [{"at", "t", "event"}]: submitted, cancel asked, resumed, ...
    estimate: dict = field(default_factory=dict)  # for rented GPUs: time and dollars expected before the start
    format: int = FORMAT

    @property
    def cancel_asked(self) -> bool:
        """Whether the user cancelled the latest attempt (a resume starts a new one)."""
        for event in reversed(self.events):
            if event["event"] == "cancel asked":
                return True
            if event["event"] in ("submitted", "resumed"):
                return False
        return False

    @property
    def pruned_after(self) -> int | None:
        """The epoch after which a sweep's pruner stopped the latest attempt (it cancels a remote
        trial, runner/sweeps/remote.py), or None: such a cancel is not the user's."""
        for event in reversed(self.events):
            if event["event"] == "pruned":
                return event.get("epoch")
            if event["event"] in ("submitted", "resumed"):
                return None
        return None

    def note(self, event: str, t: float | None = None, **detail) -> None:
        # "t": the same moment in seconds since the epoch, for durations (start-up phases)
        t = time.time() if t is None else t
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
        self.events.append({"at": at, "t": round(t, 3), "event": event, **detail})

    def last_start(self) -> float | None:
        """When the latest attempt was asked for (submitted or resumed), in epoch seconds."""
        for event in reversed(self.events):
            if event["event"] in ("submitted", "resumed"):
                return event.get("t") or _seconds(event.get("at"))  # records before "t": to the second
        return None


def _seconds(text: str | None) -> float | None:
    from datetime import datetime

    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def new_submission(backend: str, run: str, spec=None, spec_path: Path | None = None, detached: bool = False,
                   world_size: int | None = None) -> Submission:
    origin = {"host": socket.gethostname(), "user": _user(), "cwd": os.getcwd()}
    if spec_path is not None:
        origin["spec"] = str(spec_path)
    asks = {}
    if spec is not None:
        asks = {"gpu": spec.resources.gpu, "world_size": world_size, "epochs": spec.train.epochs,
                "max_steps": spec.train.max_steps, "name": spec.name}
    submission = Submission(backend, run, submitted_from=origin, asks=asks, detached=detached)
    submission.note("submitted")
    return submission


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def is_run(folder: Path) -> bool:
    return (folder / RECORD).is_file()


def write(folder: Path, submission: Submission) -> None:
    atomic_write(Path(folder) / RECORD, (json.dumps(asdict(submission), indent=2) + "\n").encode())


def read(folder: Path) -> Submission:
    """The run's record; exit 2 naming the folder when it is not a run or the record is damaged."""
    folder = Path(folder)
    path = folder / RECORD
    if not path.is_file():
        if not folder.is_dir():
            raise bad_input(f"{folder}: no such run folder")
        raise bad_input(f"{folder}: not a gpujob run (no {RECORD}); gpujob only acts on folders it made")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("backend"), str):
            raise ValueError("no backend named")
        known = {k: v for k, v in data.items() if k in Submission.__dataclass_fields__}
        return Submission(**known)
    except (OSError, ValueError, TypeError) as err:
        raise bad_input(f"{path}: damaged submission record ({err}); gpujob will not act on this run") from None


def phase_ended(folder: Path, event: str, phase: str, t: float | None = None) -> Submission:
    """Record that a start-up phase the backend could see ended (at `t`, default now): `gpujob
    show` and compare time the start from the submission through these to the job's own start."""
    submission = read(folder)
    submission.note(event, t=t, phase=phase)
    write(folder, submission)
    return submission


def update(folder: Path, **changes) -> Submission:
    """Read, change and write back the record (handles are merged, not replaced)."""
    submission = read(folder)
    for key, value in changes.items():
        if key == "handles":
            submission.handles.update(value)
        else:
            setattr(submission, key, value)
    write(folder, submission)
    return submission
