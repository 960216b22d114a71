"""Writing a run folder's files so that a kill never leaves half of one: every whole-file
write goes through a temp file, fsync and a rename, and a temp file a kill left behind is
recognised (and never taken for part of a run)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PurePath
from typing import Iterable

# mkstemp makes 0600 files; run folders are read by the user's other tools and, on a cluster,
# by the submitting user from other machines: give whole-file writes the usual umask'd mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


_TEMP_SUFFIX = ".tmp"
# atomic_write's temp files: mkstemp's ".NAME.XXXXXXXX.tmp", eight random [a-z0-9_] characters.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def is_interrupted_write(path: PurePath) -> bool:
    """A temp file of atomic_write's that a kill left behind: never part of a run (and never a
    user's own `.draft.tmp`, which does not have mkstemp's shape)."""
    return bool(_TEMP_NAME.match(path.name))


def remove_interrupted_writes(folder: Path) -> None:
    for path in folder.iterdir() if folder.is_dir() else []:
        if is_interrupted_write(path):
            path.unlink(missing_ok=True)


def atomic_write(path: Path, *parts: bytes) -> None:
    """Write `parts` one after another to `path` through a temp file, fsync and rename."""
    atomic_write_chunks(path, parts)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """atomic_write for data that arrives in chunks (a download): never all in memory at once."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, path)
        except OSError as err:  # e.g. a folder where the file goes: name the file, not the temp one
            raise type(err)(err.errno, err.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
