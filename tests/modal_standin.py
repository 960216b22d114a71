"""Modal's servers, stood in for by this machine at gpujob's seam with Modal (ModalClient,
runner/backends/modal/client.py), under gpujob's real ModalService: a volume, the output, an
app run, a spawn and a call by its id, answered as Modal's client objects answer.

A spawned call runs as Modal runs an input: each attempt in its own process, a fresh container
(tests/modal_container.py); an attempt is killed at the function's timeout, and one that raised
or timed out is run again, up to the function's retries, after its retry delay (the timeout
starts again with each attempt). `modal_second` is how long one of Modal's seconds lasts here,
so a test can meet a 30-minute timeout in a few seconds. FunctionCall.cancel() is the SIGUSR1
Modal sends the container (with terminate_containers, the container's end) and the input is
not retried. FunctionCall.get() answers as the installed SDK's does (modal/_functions.py,
modal/_utils/function_utils.py): the return value; the last attempt's exception; a
FunctionTimeoutError when the last attempt ran past the timeout; a RemoteError for an input
that ended cancelled without returning (a TERMINATED result); an OutputExpiredError once Modal
no longer keeps the result (`expired`); the builtin TimeoutError while it runs; InternalFailure
for an input whose containers Modal kept losing (`lost_containers`: Modal reruns a lost attempt
at once, outside the function's retries, and gives up after INTERNAL_FAILURE_LIMIT of them with
a GENERIC_STATUS_INTERNAL_FAILURE result, modal/_functions.py and _process_result). App.run()
swallows a KeyboardInterrupt, and a modal ConnectionError in a detached app's block, as
modal/runner.py's does. The volume is a folder, logs are the containers' output, and `fail_next`
makes the next calls of one kind meet Modal's own trouble (InternalError, ServiceError, ...).
A spawn made inside a container (a chain's next call) is served like the client's: a new call
with its own id, found by that id, failing as the client's spawn fails."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from runner.backends.modal.app import VOLUME_PATH_ENV, app_for, function_for, image_for
from runner.reports.notify import NOTIFY_ENV
from tests.conftest import REPO
from tests.modal_container import SPAWNS_ENV

# How many lost attempts of one input Modal reruns before it gives up on it: the client's own
# limit for the inputs it retries itself (MAX_INTERNAL_FAILURE_COUNT in modal/_functions.py).
INTERNAL_FAILURE_LIMIT = 8


class FolderVolume:
    """modal.Volume's listdir(), iterdir() and read_file() over a local folder."""

    def __init__(self, root: Path, modal: "ContainerModal"):
        self.root, self.modal = root, modal

    def _entry(self, p: Path):
        from modal.types import FileEntry, FileEntryType

        kind = FileEntryType.DIRECTORY if p.is_dir() else FileEntryType.FILE
        return FileEntry(path=str(p.relative_to(self.root)), type=kind, mtime=int(p.stat().st_mtime),
                         size=p.stat().st_size)

    def listdir(self, path: str, recursive: bool = False):
        self.modal.trouble("volume")
        base = self.root / path.lstrip("/")
        if not base.exists():
            return []
        return [self._entry(p) for p in sorted(base.rglob("*") if recursive else base.iterdir())]

    def iterdir(self, path: str, recursive: bool = True):
        from modal.exception import NotFoundError

        self.modal.trouble("volume")
        base = self.root / path.lstrip("/")
        if not base.exists():
            raise NotFoundError(f"No such file or directory: {path}")
        for p in sorted(base.rglob("*") if recursive else base.iterdir()):
            yield self._entry(p)

    def read_file(self, path: str):
        self.modal.trouble("volume")
        data = (self.root / path).read_bytes()
        for start in range(0, len(data), 4096):
            yield data[start:start + 4096]


_LOCAL_DIRS: "weakref.WeakKeyDictionary[object, list[tuple[Path, str]]]" = weakref.WeakKeyDictionary()


def watch_local_dirs() -> None:
    """Record, for every modal.Image, the folders of this machine it adds (add_local_dir, Modal's
    public method, called through unchanged): Modal has no public way to list an image's files,
    so the stand-in watches the calls gpujob makes to add them instead of reading the client's
    internals. An argument the stand-in does not model (`ignore`, `copy=True`) fails loudly."""
    import modal

    if getattr(modal.Image.add_local_dir, "watched_by_standin", False):
        return
    original = modal.Image.add_local_dir

    def add_local_dir(image, local_path, remote_path, **options):
        assert not options.get("ignore") and not options.get("copy"), f"not modelled by the stand-in: {options}"
        added = original(image, local_path, remote_path, **options)
        _LOCAL_DIRS[added] = [*_LOCAL_DIRS.get(image, []), (Path(local_path), remote_path)]
        return added

    add_local_dir.watched_by_standin = True  # type: ignore[attr-defined]
    modal.Image.add_local_dir = add_local_dir  # type: ignore[method-assign,assignment]


def image_files(image) -> list[tuple[Path, str]]:
    """(local file, path in the container) for every file the image adds from this machine's
    folders, as Modal's add_local_dir uploads them: each file under the folder, at the same
    relative path under remote_path. Needs watch_local_dirs() before the image is built."""
    return [(file, f"{remote.rstrip('/')}/{file.relative_to(local).as_posix()}")
            for local, remote in _LOCAL_DIRS.get(image, []) for file in sorted(local.rglob("*")) if file.is_file()]


class ContainerCall:
    """modal.FunctionCall for one input, run attempt by attempt in local processes."""

    def __init__(self, modal: "ContainerModal", call_id: str, request):
        self.modal, self.object_id, self.request = modal, call_id, request
        self.log_file = modal.scratch / f"{call_id}.log"
        self.log_file.touch()
        self.request_file = modal.scratch / f"{call_id}.request.json"
        self.request_file.write_text(json.dumps(dataclasses.asdict(request)))
        self.attempts: list[tuple[str, float]] = []  # how each attempt ended, and after how many seconds here
        self.cancelled = self.terminated = False
        self.outcome: tuple[str, object] | None = None  # ("return", value) or ("raise", exception)
        self.proc: subprocess.Popen | None = None
        self.ended = threading.Event()
        self.no_retry = threading.Event()
        self.lock = threading.Lock()
        self.shown = 0
        threading.Thread(target=self._run_input, daemon=True).start()

    # ---- what Modal does with the input --------------------------------------------------

    def _run_input(self) -> None:
        from modal.exception import FunctionTimeoutError, InternalFailure, RemoteError

        policy = self.request.options()["retries"]
        timeout_here = self.request.timeout_s * self.modal.modal_second
        attempt = lost = 0
        while attempt <= policy.max_retries:
            result_file = self.modal.scratch / f"{self.object_id}.attempt-{attempt + lost + 1}.json"
            with self.lock:
                if self.cancelled:
                    break
                with open(self.log_file, "ab") as log:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-m", "tests.modal_container", str(self.request_file), str(result_file)],
                        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                        env={**self._container_env(), VOLUME_PATH_ENV: str(self.modal.volume_folder),
                             SPAWNS_ENV: str(self.modal.spawns), "PYTHONUNBUFFERED": "1"})
            began = time.monotonic()
            if lost < self.modal.lost_containers:  # the worker under the container is lost
                self._kill()
                lost += 1
                self.attempts.append(("lost", time.monotonic() - began))
                if lost < INTERNAL_FAILURE_LIMIT:
                    continue  # rerun at once; not one of the function's retries
                self.outcome = ("raise", InternalFailure("the input failed inside Modal: its container was lost"))
                break
            attempt += 1
            try:
                self.proc.wait(timeout=timeout_here)
                timed_out = False
            except subprocess.TimeoutExpired:  # Modal ends the container at the function's timeout
                self._kill()
                timed_out = True
            seconds = time.monotonic() - began
            result = json.loads(result_file.read_text()) if result_file.exists() else {}
            if "return" in result:
                self.attempts.append(("returned", seconds))
                self.outcome = ("return", result["return"])
                break
            if self.cancelled or result.get("cancelled"):
                self.attempts.append(("cancelled", seconds))
                break
            error: BaseException
            if timed_out:
                self.attempts.append(("timed out", seconds))
                error = FunctionTimeoutError(f"Function timed out after {self.request.timeout_s} s")
            elif "raised" in result:
                self.attempts.append(("raised", seconds))
                error = _remote_exception(result["raised"], result["message"])
            else:
                self.attempts.append((f"exited {self.proc.returncode}", seconds))
                error = RemoteError(f"the container exited with code {self.proc.returncode} and no result")
            self.outcome = ("raise", error)
            if attempt <= policy.max_retries:  # retried after the policy's delay, unless cancelled meanwhile
                delay = policy.initial_delay.total_seconds() * policy.backoff_coefficient ** (attempt - 1)
                if self.no_retry.wait(delay * self.modal.modal_second):
                    break
        if self.cancelled and (self.outcome is None or self.outcome[0] == "raise"):
            # A cancelled input that did not return: a TERMINATED result, which the SDK's
            # _process_result raises as RemoteError(result.exception), empty for a cancellation.
            self.outcome = ("raise", RemoteError(""))
        self.ended.set()

    def _secrets_env(self) -> dict[str, str]:
        """The variables Modal sets in the container from the function's secrets. The SDK gives no
        public way to read a Secret back, so this takes the dictionary gpujob made each one from
        (Secret.from_dict: "a dictionary of environment variable names to string values"), once
        the call's options hold as many modal.Secret objects as that."""
        import modal

        secrets = self.request.options().get("secrets", [])
        assert all(isinstance(secret, modal.Secret) for secret in secrets)
        given = {key: value for key, value in self.request.secret_env().items() if value is not None}
        assert bool(secrets) == bool(given), "a secret is sent exactly when there is something in it"
        return given

    def _container_env(self) -> dict[str, str]:
        """The container's environment: none of this machine's Python paths, and the image's
        local files where the image puts them (the job's own code at CODE_MOUNT, in a folder here)."""
        # The client's own environment never reaches Modal's container; the function's secrets do.
        env = {k: v for k, v in os.environ.items() if k not in ("GPUJOB_CODE_PATHS", "PYTHONPATH", NOTIFY_ENV)}
        env.update(self._secrets_env())
        # with_options(env=...): "environment variables to set in the container" (None values unset)
        env.update({k: v for k, v in (self.request.options().get("env") or {}).items() if v is not None})
        from runner.backends.modal.app import CODE_MOUNT, CODE_MOUNT_ENV

        # gpujob's own runner/ is the one here (the tests' checkout); the job's code is what the image adds.
        files = [(local, remote) for local, remote in image_files(image_for(self.request))
                 if remote.startswith(f"{CODE_MOUNT}/")]
        if files:
            root = self.modal.scratch / f"{self.object_id}.image"
            for local, remote in files:
                target = root / remote.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target)
            env[CODE_MOUNT_ENV] = str(root / CODE_MOUNT.lstrip("/"))
        return env

    def _kill(self) -> None:
        assert self.proc is not None  # started before anything kills it
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    # ---- modal.FunctionCall ----------------------------------------------------------------

    def get(self, timeout: float | None = None):
        from modal.exception import OutputExpiredError

        self.modal.trouble("get")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ended.is_set():
            self._echo()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()  # the builtin one: no result yet
            time.sleep(0.05)
        self._echo()
        if self.modal.expired:
            raise OutputExpiredError()
        assert self.outcome is not None, "an ended input has an outcome"
        kind, value = self.outcome
        if kind == "raise":
            assert isinstance(value, BaseException)
            raise value
        return value

    def cancel(self, terminate_containers: bool = False) -> None:
        self.modal.trouble("cancel")
        self.modal.cancels.append(self.object_id)
        with self.lock:
            self.cancelled = True
            self.no_retry.set()
            if self.proc is not None and self.proc.poll() is None:
                if terminate_containers:
                    self._kill()
                else:
                    self.proc.send_signal(signal.SIGUSR1)  # what Modal sends a sync function's container

    @property
    def logs(self):
        return SimpleNamespace(tail=self._tail, stream=self._stream)

    def _lines(self) -> list[str]:
        text = self.log_file.read_text(errors="replace")
        ended = self.ended.is_set()
        return text.splitlines() if ended else text.splitlines()[:text.count("\n")]  # whole lines only

    def _entry(self, line: str):
        from modal.types import LogEntry

        return LogEntry(message=line + "\n", timestamp=datetime.now(timezone.utc), source="stdout",
                        object_id=self.object_id, context_ids=[self.object_id])

    def _tail(self, entries: int = 100):
        self.modal.trouble("logs")
        for line in self._lines()[-entries:]:
            yield self._entry(line)

    def _stream(self, timeout: float | None = None):
        self.modal.trouble("logs")
        shown = 0
        while True:
            ended = self.ended.is_set()
            lines = self._lines()
            for line in lines[shown:]:
                yield self._entry(line)
            shown = len(lines)
            if ended:
                return
            time.sleep(0.1)

    def _echo(self) -> None:
        """modal.enable_output(): the container's output printed here while the app runs; and the
        user's Ctrl-C (a real SIGINT to this process) once `interrupt_after` lines have shown."""
        if not self.modal.echoing:
            return
        lines = self._lines()
        for line in lines[self.shown:]:
            print(line, flush=True)
        self.shown = len(lines)
        after = self.modal.interrupt_after
        if after is not None and self.shown >= after and not self.modal.interrupted:
            self.modal.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)


def _remote_exception(name: str, message: str) -> BaseException:
    """The exception the function raised, as the SDK deserializes it (builtins by name here)."""
    import builtins

    from modal.exception import RemoteError

    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        return kind(message)
    return RemoteError(f"{name}: {message}")


class ContainerModal:
    """A ModalClient for gpujob's ModalService (see the module's docstring). `interrupt_after`:
    the user presses Ctrl-C once an attached submit has shown that many lines."""

    def __init__(self, volume: Path, scratch: Path, interrupt_after: int | None = None, modal_second: float = 1.0,
                 expired: bool = False, lost_containers: int = 0):
        self.volume_folder, self.scratch = volume, scratch
        self.interrupt_after, self.modal_second, self.expired = interrupt_after, modal_second, expired
        self.lost_containers = lost_containers  # each call's first attempts whose container Modal loses
        self.calls: dict[str, ContainerCall] = {}
        self.cancels: list[str] = []
        self.app_runs: list[bool] = []  # each app.run(detach=...)
        self.echoing = self.interrupted = False
        self.failures: dict[str, list[BaseException]] = {}
        self.spawned_inside: list[str] = []  # calls spawned by a container (a chain's next call)
        self.spawns = scratch / "spawns"  # where a container's spawns arrive (tests/modal_container.py)
        self.spawns.mkdir(parents=True, exist_ok=True)
        self.closed = threading.Event()
        self.spawn_lock = threading.Lock()
        watch_local_dirs()  # before gpujob builds the images whose files a container gets
        threading.Thread(target=self._serve_spawns_from_containers, daemon=True).start()

    # ---- the test's handles -----------------------------------------------------------------

    def fail_next(self, kind: str, *errors: BaseException) -> None:
        """The next calls of `kind` (get, cancel, logs, volume, spawn) raise `errors`, one each."""
        self.failures.setdefault(kind, []).extend(errors)

    def trouble(self, kind: str) -> None:
        if self.failures.get(kind):
            raise self.failures[kind].pop(0)

    def wait_all(self, timeout: float = 300) -> None:
        for call in self.calls.values():
            assert call.ended.wait(timeout), f"call {call.object_id} still runs after {timeout} s"

    def stop_all(self) -> None:
        self.closed.set()
        for call in list(self.calls.values()):
            call.no_retry.set()
            call.cancelled = True
            if call.proc is not None and call.proc.poll() is None:
                call._kill()

    # ---- ModalClient ---------------------------------------------------------------------------

    def call(self, call_id: str) -> ContainerCall:
        return self.calls[call_id]

    def volume(self) -> FolderVolume:
        return FolderVolume(self.volume_folder, self)

    @contextmanager
    def output(self):
        self.echoing = True
        try:
            yield
        finally:
            self.echoing = False

    @contextmanager
    def running(self, request, detach: bool = False):
        """modal.App.run(): an ephemeral app; like Modal's runner, it swallows a KeyboardInterrupt
        raised inside its block ("Disconnecting from Modal"), and in a detached app with output
        enabled a modal ConnectionError too ("Connection lost!": the app keeps running)."""
        from modal.exception import ConnectionError as ModalConnectionError

        app_for(request)  # the app gpujob would run must build
        self.app_runs.append(detach)
        try:
            yield
        except KeyboardInterrupt:
            return
        except ModalConnectionError:
            if detach and self.echoing:
                return
            raise

    def spawn(self, request) -> ContainerCall:
        function_for(request)  # the very call gpujob would spawn, configured for the job, must build
        return self._spawn(request, *request.args())

    def _serve_spawns_from_containers(self) -> None:
        """A spawn made inside a container, served as Modal serves one: the function configured
        as the request says must build, `fail_next("spawn")` fails it as a client's spawn
        fails, and it becomes a new call with its own id, which the client finds by that id."""
        from runner.backends.modal.request import ModalRequest

        while not self.closed.is_set():
            for asked in sorted(self.spawns.glob("spawn-*.json")):
                answer = asked.with_suffix(".answer")
                if answer.exists():
                    continue
                try:
                    call = self.spawn(ModalRequest(**json.loads(asked.read_text())))
                    self.spawned_inside.append(call.object_id)
                    said = {"call_id": call.object_id}
                except Exception as err:  # noqa: BLE001 - handed to the container, as Modal's client raises it
                    said = {"error": type(err).__name__, "message": str(err)}
                answer.with_suffix(".tmp").write_text(json.dumps(said))
                answer.with_suffix(".tmp").rename(answer)
            self.closed.wait(0.1)

    def _spawn(self, request, spec_yaml: str, run_name: str, submission: str) -> ContainerCall:
        self.trouble("spawn")
        assert (spec_yaml, run_name, submission) == request.args() and submission
        with self.spawn_lock:  # the client and a container may spawn at once
            call_id = f"fc-test-{len(self.calls) + 1}"
            self.calls[call_id] = ContainerCall(self, call_id, request)
        return self.calls[call_id]

