"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is `checkpoints/step-NNNNNNNN.pt`, plain torch.save output that `torch.load`
opens, with its SHA-256 beside it in `step-NNNNNNNN.pt.sha256`. Both are written to a temp file,
fsynced and renamed, the digest first: a kill mid-write leaves the previous checkpoint whole,
and a checkpoint file never lacks its digest. The last two are kept. Loading verifies the digest
and falls back to the older file when the newest is damaged, saying so. A checkpoint whose digest
file is missing is used if it loads, with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
from pathlib import Path

from runner.errors import job_failed
from runner.runs.files import atomic_write, remove_interrupted_writes
from runner.runs.paths import DIGEST, RunPaths, digest_file

KEEP = 2


class CheckpointStore:
    def __init__(self, run_dir: Path):
        self.run = RunPaths(run_dir)  # names the checkpoints and says which is newest
        self.dir = self.run.checkpoints_dir
        self.loaded: Path | None = None  # what load_latest read

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return self.run.checkpoints()

    def save(self, state: dict, step: int) -> Path:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.run.checkpoint(step)
        atomic_write(digest_file(path), (hashlib.sha256(payload).hexdigest() + "\n").encode())
        atomic_write(path, payload)  # temp file .step-*.tmp until renamed
        _fsync_dir(self.dir)  # the renames themselves survive a power cut
        for old in self.paths()[KEEP:]:
            old.unlink(missing_ok=True)
            digest_file(old).unlink(missing_ok=True)
        for stray in self.dir.glob(f"step-*.pt{DIGEST}"):  # a digest whose checkpoint a kill never wrote
            if not stray.with_suffix("").exists():
                stray.unlink(missing_ok=True)
        return path

    def load_latest(self) -> dict | None:
        """The newest intact checkpoint, or None if there is none. A damaged newest file
        is reported and skipped; if every file is damaged the run cannot continue."""
        if self.dir.exists() and not self.dir.is_dir():  # before anything is cut back to "no checkpoint"
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.dir))
        remove_interrupted_writes(self.dir)
        paths = self.paths()
        for path in paths:
            try:
                state = read_checkpoint(path)
                self.loaded = path
                return state
            except ValueError as err:
                print(f"gpujob: warning: {err}; falling back to the previous checkpoint", file=sys.stderr)
        if paths:
            raise job_failed(f"every checkpoint in {self.dir} is damaged; cannot resume")
        return None


def read_checkpoint(path: Path) -> dict:
    """A checkpoint, checked against its digest. One whose digest file is gone (deleted by hand,
    not copied along) is loaded if it loads, and says so: only a mismatch or a file that does not
    load is damaged."""
    import torch

    data = Path(path).read_bytes()
    digest = digest_file(Path(path))
    try:
        expected = digest.read_text().strip()
    except FileNotFoundError:
        expected = None
    except OSError as err:
        raise ValueError(f"checkpoint {path}: its checksum file cannot be read ({err.strerror})") from None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"checkpoint {path} is damaged (truncated or corrupted)")
    try:
        # Our own file: it holds RNG states (numpy arrays), so not weights_only.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} does not load ({type(err).__name__}); damaged") from None
    if not (isinstance(state, dict) and {"model", "loop"} <= set(state)):
        raise ValueError(f"checkpoint {path} is not a gpujob checkpoint (no model or loop state)")
    if expected is None:
        print(f"gpujob: warning: checkpoint {path.name} has no checksum file ({digest.name}); it loaded whole, "
              "so it is used", file=sys.stderr)
    return state


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems (NFS, a Modal volume) cannot fsync a folder; the file itself was fsynced
    finally:
        os.close(fd)


def rng_states() -> dict:
    import random

    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
