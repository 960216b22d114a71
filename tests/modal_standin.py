"""Modal's servers, stood in for by this machine: ModalService's methods, where each call runs in
its own process as a Modal container would (tests/modal_container.py), the volume is a folder,
cancel is the SIGUSR1 Modal sends, and logs are the container's output."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.backends.modal.app import VOLUME_PATH_ENV
from runner.backends.modal.service import CallState, copy_run_folder, outcome
from runner.stop_signals import INTERRUPTED
from tests.conftest import REPO


class FolderVolume:
    """modal.Volume's iterdir() and read_file() over a local folder."""

    def __init__(self, root: Path):
        self.root = root

    def iterdir(self, path: str, recursive: bool = True):
        from modal.volume import FileEntry, FileEntryType

        base = self.root / path.lstrip("/")
        if not base.exists():
            raise FileNotFoundError(path)
        for p in sorted(base.rglob("*")):
            kind = FileEntryType.DIRECTORY if p.is_dir() else FileEntryType.FILE
            yield FileEntry(path=str(p.relative_to(self.root)), type=kind, mtime=int(p.stat().st_mtime),
                            size=p.stat().st_size)

    def read_file(self, path: str):
        data = (self.root / path).read_bytes()
        for start in range(0, len(data), 4096):
            yield data[start:start + 4096]


class ContainerModal:
    """ModalService's contract over local processes. `interrupt_after` makes an attached start
    see Ctrl-C once the call has printed that many lines (ModalService cancels the call then)."""

    def __init__(self, volume: Path, scratch: Path, interrupt_after: int | None = None, expired: bool = False):
        self.volume, self.scratch, self.interrupt_after, self.expired = volume, scratch, interrupt_after, expired
        self.procs: dict[str, subprocess.Popen] = {}
        self.cancels: list[str] = []
        scratch.mkdir(parents=True, exist_ok=True)

    def _file(self, call_id: str, kind: str) -> Path:
        return self.scratch / f"{call_id}.{kind}"

    def run_names(self) -> set[str]:
        return {p.name for p in self.volume.iterdir()} if self.volume.exists() else set()

    def start(self, request, run_name, detach, spawned):
        assert run_name == request.run_name
        call_id = f"fc-test-{len(self.procs) + 1}"
        self._file(call_id, "request").write_text(json.dumps(dataclasses.asdict(request)))
        with open(self._file(call_id, "log"), "wb") as log:
            self.procs[call_id] = subprocess.Popen(
                [sys.executable, "-m", "tests.modal_container", str(self._file(call_id, "request")),
                 str(self._file(call_id, "result"))], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, VOLUME_PATH_ENV: str(self.volume), "PYTHONUNBUFFERED": "1"})
        spawned(call_id)
        if detach:
            return None
        shown = 0
        try:
            while True:
                lines = self._file(call_id, "log").read_text().splitlines()
                for line in lines[shown:]:
                    print(line, flush=True)
                shown = len(lines)
                if self.interrupt_after is not None and shown >= self.interrupt_after:
                    raise KeyboardInterrupt
                if self.procs[call_id].poll() is not None:
                    return self.poll(call_id)
                time.sleep(0.05)
        except KeyboardInterrupt:
            self.cancel(call_id)  # what ModalService.start does when Ctrl-C reaches it
            self.procs[call_id].wait(timeout=120)
            raise

    def poll(self, call_id: str) -> CallState:
        if self.procs[call_id].poll() is None:
            return CallState("running")
        if self.expired:
            return CallState("ended")
        result = json.loads(self._file(call_id, "result").read_text())
        if "return" in result:
            return outcome(result["return"])
        if result["raised"] == "InputCancellation":
            return CallState("failed", INTERRUPTED, "the call was cancelled")
        return CallState("failed", 1, f"{result['raised']}: {result['message']}")

    def cancel(self, call_id: str) -> None:
        self.cancels.append(call_id)
        if self.procs[call_id].poll() is None:
            self.procs[call_id].send_signal(signal.SIGUSR1)

    def logs(self, call_id: str, follow: bool):
        shown = 0
        while True:
            running = self.procs[call_id].poll() is None
            lines = self._file(call_id, "log").read_text().splitlines()
            yield from lines[shown:]
            shown = len(lines)
            if not (follow and running):
                return
            time.sleep(0.1)

    def download(self, run_name, dest):
        try:
            return copy_run_folder(FolderVolume(self.volume), run_name, dest)
        except FileNotFoundError:
            return []

    def wait_all(self) -> None:
        for proc in self.procs.values():
            proc.wait(timeout=300)
