"""The lock a live run holds: `flock` on RUN/.lock, taken by the process that runs the job
(a single worker, or the launcher of several) and released by the kernel when that process
dies, however it dies. The file also says who holds it (host, pid, since), for `status`
and `cancel`.

A probe (`holder`) takes a shared lock for an instant; the owner takes an exclusive one and
retries for a moment, so a probe never makes a real start fail. Workers started by a launcher
that holds the lock are told so through GPUJOB_RUN_LOCKED and do not take it again.

Liveness never rests on the lock file alone, which a user can delete or replace: the holder also
records itself (host, pid, and the process's start time, so a reused pid is not taken for it) as
the run's `trainer` in its submission record, and a run whose recorded trainer is still alive on
this host is live whatever became of `.lock`.
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

from runner.errors import bad_input
from runner.runs import record as run_record
from runner.runs.paths import LOCK, RECORD

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
    trainer = recorded_trainer(folder)
    if trainer and trainer.get("pid") != os.getpid() and is_alive(trainer):
        raise LockHeld(trainer)  # its .lock was deleted or replaced: the trainer still runs
    fd = _open_lock(folder)
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
    owner = {**identity(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    _held[key] = [fd, 1]
    _record_trainer(folder, owner)


def _open_lock(folder: Path) -> int:
    path = Path(folder) / LOCK
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except IsADirectoryError:
        raise bad_input(f"{path}: a folder is where gpujob keeps the run's lock; move it away, then try "
                        "again") from None


def _record_trainer(folder: Path, owner: dict | None) -> None:
    """The holder, in the run's record too: what says the run is live if .lock goes (None once
    it let go: a process that ran a job and lives on is not that job)."""
    try:
        if run_record.is_run(folder):
            run_record.update(folder, handles={"trainer": owner})
    except Exception:  # a damaged record is reported by whoever reads it; the flock still holds
        pass


def recorded_trainer(folder: Path) -> dict | None:
    """The process the run's record names as its trainer (the last lock holder), if any."""
    try:
        data = json.loads((Path(folder) / RECORD).read_text())
        trainer = data.get("handles", {}).get("trainer")
    except (OSError, ValueError, AttributeError):
        return None
    return trainer if isinstance(trainer, dict) else None


def identity(pid: int | None = None) -> dict:
    """This host, a pid, and what tells that process apart from a later one with the same pid:
    its start time since boot and the boot it belongs to."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": _start_ticks(pid), "boot": _boot_id()}


def is_alive(who: dict) -> bool:
    """Whether the process `who` names still runs (False for one on another host: only its own
    backend can tell, and does)."""
    pid = who.get("pid")
    if who.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    started = _start_ticks(pid)
    if started is None:
        return False
    if who.get("started") is not None and (started != who["started"] or who.get("boot") != _boot_id()):
        return False  # the pid was given to another process since
    return True


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None for a
    process that is gone or a zombie (it runs no more; only its exit status waits to be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)  # no /proc (macOS): existence is all that can be told
            return 0
        except (ProcessLookupError, PermissionError, OSError):
            return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


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
        _record_trainer(folder, None)  # released: the record no longer names a live trainer
        os.close(held[0])  # closing the only descriptor drops the flock


def holds(folder: Path) -> bool:
    """Whether this process holds the run's lock."""
    return _key(folder) in _held


def holder(folder: Path) -> dict | None:
    """Who holds the run's lock ({} when the file does not say), or None when nobody does."""
    key = _key(folder)
    if key in _held:
        return {"host": socket.gethostname(), "pid": os.getpid()}
    held = _probe(folder)
    if held is not None:
        return held
    trainer = recorded_trainer(folder)
    if trainer and trainer.get("pid") != os.getpid() and is_alive(trainer):
        return trainer  # .lock was deleted or replaced while its holder runs on
    return None


def _probe(folder: Path) -> dict | None:
    """Who holds the flock on .lock, or None when nobody does (or there is no lock file)."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no process holds one
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
