"""The lock a live run holds: `flock` on RUN/.lock, taken by the process that runs the job
(a single worker, or the launcher of several) and released by the kernel when that process
dies, however it dies. The file also says who holds it (host, pid, since), for `status`
and `cancel`.

A probe (`holder`) takes a shared lock for an instant; the owner takes an exclusive one and
retries for a moment, so a probe never makes a real start fail. Workers started by a launcher
that holds the lock are told so through GPUJOB_RUN_LOCKED and do not take it again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"
INHERITED = "GPUJOB_RUN_LOCKED"  # set by the launcher for its workers: the run folder it locked
_held: dict[str, list[int]] = {}  # this process's locks: resolved run folder -> [descriptor, holders]
_ACQUIRE_TRIES_S = 1.0


class LockHeld(Exception):
    """The run is live: another process holds its lock. `owner` says who, where known."""

    def __init__(self, owner: dict):
        super().__init__(f"held by {describe(owner)}")
        self.owner = owner


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def acquire(folder: Path) -> None:
    """Take the run's lock until as many `release`s (or this process's end). Raises LockHeld
    when another process has it; counts once more when this process already has it, and
    does nothing in a worker whose launcher holds it."""
    key = _key(folder)
    if key in _held:
        _held[key][1] += 1
        return
    if os.environ.get(INHERITED) == key:
        return
    fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _ACQUIRE_TRIES_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                owner = _read_owner(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockHeld(owner) from None
                raise
            time.sleep(0.02)  # a probe holds it for an instant
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    _held[key] = [fd, 1]


@contextmanager
def acting_on(folder: Path):
    """Hold a lock on the run folder itself while a command submits, resumes or cancels the run,
    so that two such commands never act on one run at once; it adds no file to the folder.
    Raises LockHeld when another command holds it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld({}) from None
            raise
        yield
    finally:
        os.close(fd)


def release(folder: Path) -> None:
    held = _held.get(_key(folder))
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _held[_key(folder)]
        os.close(held[0])  # closing the only descriptor drops the flock


def holds(folder: Path) -> bool:
    """Whether this process holds the run's lock."""
    return _key(folder) in _held


def holder(folder: Path) -> dict | None:
    """Who holds the run's lock ({} when the file does not say), or None when nobody does."""
    key = _key(folder)
    if key in _held:
        return {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no process ever ran this job here
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read_owner(fd)
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_owner(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def describe(owner: dict) -> str:
    if owner.get("pid"):
        return f"process {owner['pid']} on {owner.get('host', 'an unknown host')}"
    return "another process"
