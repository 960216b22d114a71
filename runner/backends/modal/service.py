"""Talking to Modal: the only code that touches Modal's servers, and the one place that
turns what Modal raises into gpujob's errors.

Credentials are checked here, without the network, before anything else: a missing token,
a missing `modal` package, a rejected token or an unreachable server each end as exit 3
with one line saying what to do. Tokens are only ever read by Modal's own client; nothing
here prints or stores them. ModalService reaches Modal through a ModalClient (client.py), where
tests put their stand-in for Modal's servers.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from runner.backends.interrupts import held_interrupts
from runner.errors import (
    INTERRUPTED,
    JOB_FAILED,
    error_first_line,
    GpujobError,
    job_failed,
    missing_backend,
)
from runner.invocation import command, commands_in

NO_PACKAGE = ("modal: the modal package is not installed; install it with `uv sync --extra modal` "
              "(or `pip install 'gpujob[modal]'`)")
LOG_TAIL = 1000  # lines `gpujob logs` shows of a call without --follow
FOLLOW_POLL_S = 10.0  # attached: how long each wait for the call's result lasts
FOLLOW_OUTAGE_S = 600.0  # attached: how long Modal's own trouble is waited out before exit 3
FIRST_CONTACT_S = 15.0  # the first call to Modal: after this, it is unreachable (exit 3)
NO_CREDENTIALS = "modal: no credentials; run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"


def import_modal():
    try:
        import modal
    except ImportError:
        raise missing_backend(NO_PACKAGE) from None
    except Exception as err:  # noqa: BLE001 - modal reads ~/.modal.toml when imported: a broken file fails here
        raise missing_backend(f"modal: cannot load Modal's client: {error_first_line(err)}") from None
    return modal


def within(seconds: float, doing: str, call: Callable):
    """call(), or exit 3 when Modal has not answered within `seconds` (its client would keep
    trying for about a minute, silently). The user is told at once what is being tried."""
    result: dict = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = err

    print(f"modal: {doing} ...", file=sys.stderr, flush=True)
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise missing_backend(f"modal: Modal did not answer within {seconds:.0f} s while {doing}; check your "
                              "network connection (and https://status.modal.com), then try again")
    if "error" in result:
        raise result["error"]
    return result["value"]


def credentials_source() -> str | None:
    """Where Modal's client will find a token (never the token itself), or None."""
    import_modal()
    from modal.config import config, user_config_path

    def given(*keys: str) -> bool:
        return all(config.get(key) for key in keys)

    if given("token_id", "token_secret"):
        env = os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")
        return "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" if env else user_config_path
    if given("oauth_refresh_token", "oauth_client_id") and (config.get("oauth_client_secret")
                                                            or config.get("oauth_jwt_key")):
        return "MODAL_OAUTH_* variables"
    return None


def require_credentials() -> None:
    if credentials_source() is None:
        raise missing_backend(commands_in(NO_CREDENTIALS))



def _network_errors() -> tuple[type[BaseException], ...]:
    import modal.exception
    from grpclib.exceptions import StreamTerminatedError

    return (modal.exception.ConnectionError, ConnectionError, socket.gaierror, StreamTerminatedError)


def service_errors() -> tuple[type[BaseException], ...]:
    """What Modal raises when *Modal* (or the way to it) has trouble: never the job's outcome.
    (Not InternalFailure: that is a call's final result, ModalService._wait.)"""
    import modal.exception

    return (*_network_errors(), modal.exception.InternalError, modal.exception.ServiceError,
            modal.exception.ResourceExhaustedError, modal.exception.ClientClosed, modal.exception.DataLossError)


@contextmanager
def modal_errors(doing: str, call_id: str | None = None):
    """Turn what Modal raises while `doing` something into one-line GpujobErrors: Modal's own
    trouble is exit 3 (with the call id, so the user can look it up), never the job failing.
    Yields where the call id is kept, for a block that spawns the call it is about."""
    import modal.exception

    about = SimpleNamespace(call_id=call_id)
    try:
        yield about
    except GpujobError:
        raise
    except modal.exception.AuthError as err:
        raise missing_backend(f"modal: Modal refused your credentials while {doing} ({error_first_line(err)}); "
                              f"run `{command('modal token new')}`") from None
    except _network_errors() as err:
        raise missing_backend(f"modal: cannot reach Modal while {doing} ({type(err).__name__}: {error_first_line(err)}); "
                              "check your network connection and try again") from None
    except service_errors() as err:
        call = f"; the job itself is not affected (call {about.call_id})" if about.call_id else ""
        raise missing_backend(f"modal: Modal had trouble while {doing} ({type(err).__name__}: {error_first_line(err)})"
                              f"{call}; try again in a minute") from None
    except modal.exception.Error as err:
        raise job_failed(f"modal: {doing} failed: {type(err).__name__}: {error_first_line(err)}") from None


class LostTouch(Exception):
    """Following a call, Modal's own trouble lasted past FOLLOW_OUTAGE_S; the call runs on."""

    def __init__(self, call_id: str, cause: BaseException, lasted_s: float):
        super().__init__(call_id)
        self.call_id, self.lasted_s = call_id, lasted_s
        self.cause = f"{type(cause).__name__}: {error_first_line(cause)}"


@dataclass(frozen=True)
class CallState:
    """Where a remote call stands. exit_code: gpujob's, once the job has ended and it is known."""

    state: str  # running | finished | failed | ended (Modal no longer keeps the result) | continued
    exit_code: int | None = None
    message: str = ""
    next_call: str | None = None  # continued: the call this one handed the job to (chain.py)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe(self) -> str:
        return {"running": "running on Modal", "finished": "finished",
                "ended": "ended; Modal no longer keeps its result (`gpujob fetch` downloads what it wrote)",
                }.get(self.state, f"failed (exit {self.exit_code}): {self.message}")


def outcome(result: dict) -> CallState:
    """The state of a call that returned `result` (train_remote's {"exit_code", "message"})."""
    if result.get("next_call"):  # past Modal's per-call limit: the job goes on in another call
        return CallState("continued", None, result.get("message", ""), str(result["next_call"]))
    code = int(result["exit_code"])
    return CallState("finished" if code == 0 else "failed", code, result.get("message", ""))


class ModalService:
    """Modal's servers, as the modal backend needs them, through a ModalClient
    (runner/backends/modal/client.py: the SDK, or a test's stand-in for Modal)."""

    def __init__(self, client):
        self.client = client

    def run_names(self) -> set[str]:
        """The run folders on the volume: a new run's name must be none of them."""
        return {PurePosixPath(entry.path.lstrip("/")).name for entry in self.client.volume().listdir("/")}

    def start(self, request, run_name: str, detach: bool, spawned: Callable[[str], None],
              continued: Callable[[str], None] | None = None) -> CallState | None:
        """Spawn the job on an app that outlives this process, streaming its logs here. Detached:
        return once it has started. Else follow it to its end: trouble reaching Modal is waited
        out (the job runs on regardless), and Ctrl-C cancels it, letting it checkpoint.

        Ctrl-C during the spawn itself is held back until the call's id is recorded (`spawned`),
        so it leaves either no remote job or a run folder that tracks it; a call whose id cannot be
        recorded is cancelled (_record). Following, Modal's trouble past FOLLOW_OUTAGE_S is LostTouch;
        a job past Modal's per-call limit is followed into each call it continues in (`continued`)."""
        interrupted, state, failure = False, None, None
        live = []

        def moved(call) -> None:
            live.append(call)
            if continued is not None:
                continued(call.object_id)

        with self.client.output(), self.client.running(request, detach=True):  # a client's trouble never stops the job
            try:
                with held_interrupts() as held:
                    call = self.client.spawn(request)
                    _record(call, spawned)
                if held.interrupted:
                    interrupted = True
                    if not detach:  # the user wanted it stopped: it checkpoints and returns
                        call.cancel(terminate_containers=False)
                        self._wait_until_ended(call)
                elif not detach:
                    try:
                        state = self.follow(call, moved)
                    except KeyboardInterrupt:
                        interrupted = True
                        self.cancel_chain(live[-1] if live else call)  # the job checkpoints and returns
            except Exception as err:  # noqa: BLE001 - app.run() of a detached app swallows a ConnectionError: raised below
                failure = err
        if failure is not None:
            raise failure
        if interrupted:
            raise KeyboardInterrupt  # app.run() swallows it inside its block: raised here instead
        return state

    def follow(self, call, continued: Callable[[object], None] | None = None) -> CallState:
        """Wait for the job's end, along its chain of calls (each successor announced to
        `continued`), waiting out Modal's own trouble for up to FOLLOW_OUTAGE_S."""
        state = self._follow_one(call)
        while state.next_call:
            call = self.client.call(state.next_call)
            if continued is not None:
                continued(call)
            state = self._follow_one(call)
        return state

    def _follow_one(self, call) -> CallState:
        trouble_since = None
        while True:
            try:
                state = self._wait(call, timeout=FOLLOW_POLL_S)
                trouble_since = None
            except service_errors() as err:
                now = time.monotonic()
                trouble_since = trouble_since or now
                if now - trouble_since > FOLLOW_OUTAGE_S:
                    raise LostTouch(call.object_id, err, now - trouble_since) from None
                print(f"gpujob: warning: Modal had trouble ({type(err).__name__}: {error_first_line(err)}); the job "
                      f"runs on; asking again", file=sys.stderr)
                time.sleep(min(30.0, 2 + now - trouble_since))
                continue
            if not state.running:
                return state

    def _wait_until_ended(self, call, limit_s: float = 120.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                if not self._wait(call, timeout=5).running:
                    return
            except service_errors():
                time.sleep(2)

    def poll(self, call_id: str) -> CallState:
        """Where the job stands: its last call's state (poll_chain's)."""
        return self.poll_chain(call_id)[1]

    def poll_chain(self, call_id: str, successor_of: Callable[[int], str | None] | None = None,
                   ) -> tuple[list[str], CallState]:
        """The calls from `call_id` to the last one the chain has reached, and that one's state.
        A call whose result Modal no longer keeps is followed through `successor_of(k)`, the
        successor of the k-th call after `call_id` as the volume recorded its handover, if any."""
        calls = [call_id]
        state = self._wait(self.client.call(call_id), timeout=0)
        while True:
            next_call = state.next_call
            if next_call is None and state.state == "ended" and successor_of is not None:
                next_call = successor_of(len(calls) - 1)
            if not next_call:
                return calls, state
            calls.append(next_call)
            state = self._wait(self.client.call(next_call), timeout=0)

    def read_text(self, path: str) -> str | None:
        """A small file of the volume's, or None where there is none."""
        import modal.exception

        try:
            return b"".join(self.client.volume().read_file(path)).decode()
        except (modal.exception.NotFoundError, FileNotFoundError):
            return None

    def cancel(self, call_id: str) -> None:
        """Cancel the call without killing its container: Modal sends the function SIGUSR1, which
        train_remote turns into a checkpoint and a clean return (runner/backends/modal/app.py)."""
        self.client.call(call_id).cancel(terminate_containers=False)

    def cancel_chain(self, call) -> None:
        """Cancel the call and wait for its end; one that had handed over already (a cancel
        in the moment of a chain's handover) leaves a successor, cancelled in turn."""
        while True:
            call.cancel(terminate_containers=False)
            self._wait_until_ended(call)
            try:
                state = self._wait(call, timeout=0)
            except service_errors():
                return
            if not state.next_call:
                return
            call = self.client.call(state.next_call)

    def logs(self, call_id: str, follow: bool) -> Iterator[str]:
        """The job's output lines: its last call's latest ones, and with `follow` the rest as
        they come, on into each call the chain continues in."""
        calls, state = self.poll_chain(call_id)
        call_id = calls[-1]
        while True:
            call = self.client.call(call_id)
            yield from self._lines(call.logs.stream() if follow else call.logs.tail(LOG_TAIL))
            if not follow:
                return
            state = self._wait(call, timeout=0)
            if not state.next_call:
                return
            call_id = state.next_call

    @staticmethod
    def _lines(entries) -> Iterator[str]:
        partial = ""
        for entry in entries:
            *lines, partial = (partial + entry.message).split("\n")
            yield from lines
        if partial:
            yield partial

    def _wait(self, call, timeout: float | None) -> CallState:
        import modal.exception

        not_the_jobs: tuple[type[BaseException], ...] = (modal.exception.AuthError, *service_errors())
        try:
            return outcome(call.get(timeout=timeout))
        except modal.exception.OutputExpiredError:
            return CallState("ended")
        except TimeoutError:  # the builtin one: no result yet
            return CallState("running")
        except modal.exception.InputCancellation:
            return CallState("failed", INTERRUPTED, "the call was cancelled")
        except modal.exception.RemoteError as err:
            if not str(err).strip():  # a TERMINATED result: an input cancelled before it returned
                return CallState("failed", INTERRUPTED, "the call was cancelled")
            return CallState("failed", JOB_FAILED, f"RemoteError: {error_first_line(err)}")
        except modal.exception.FunctionTimeoutError as err:
            return CallState("failed", JOB_FAILED, f"it ran past its Modal timeout ({error_first_line(err)})")
        except modal.exception.InternalFailure as err:
            # The input's final result (GENERIC_STATUS_INTERNAL_FAILURE, modal/_utils/function_utils.py):
            # it failed inside Modal's infrastructure and Modal gave up rerunning it. Every later get()
            # says the same, so it is the job's outcome, not trouble to wait out.
            return CallState("failed", JOB_FAILED, f"it failed inside Modal's infrastructure, after Modal's own "
                                                   f"reruns (InternalFailure: {error_first_line(err)}); "
                                                   f"`{command('gpujob resume')}` "
                                                   "continues it from its last checkpoint on the volume")
        except not_the_jobs:
            raise  # about this machine or Modal, not the job: modal_errors says what to do
        except Exception as err:  # noqa: BLE001 - what train_remote raised on its last attempt
            return CallState("failed", JOB_FAILED, f"{type(err).__name__}: {error_first_line(err)}")

    def download(self, run_name: str, dest: Path) -> list[Path]:
        """Bring the volume's copy of the run folder into `dest`: what is new or changed there."""
        import modal.exception

        try:
            return copy_run_folder(self.client.volume(), run_name, dest)
        except (modal.exception.NotFoundError, FileNotFoundError):
            return []  # the job never wrote its folder (it failed at start-up)


def _record(call, spawned: Callable[[str], None]) -> None:
    """spawned(call id), or, where the run folder cannot take it (a full disk, say), the call
    cancelled. Attached or with --detach alike: a call no run folder names is one that no `gpujob
    status`, `logs`, `fetch` or `cancel` can ever find, billed until its time limit for a job the
    user was told did not start. Only where Modal refuses the cancel too is the user handed the id
    and the way to cancel it by hand."""
    try:
        spawned(call.object_id)
    except Exception as err:  # noqa: BLE001 - whatever kept the id from the folder, the call must not run untracked
        why = f"{type(err).__name__}: {error_first_line(err)}"
        try:
            call.cancel(terminate_containers=True)  # it has just started: nothing to checkpoint
        except Exception as refused:  # noqa: BLE001 - any refusal: the user is told how to cancel it by hand
            raise missing_backend(
                f"modal: could not record call {call.object_id} in the run folder ({why}), and Modal refused to "
                f"cancel it ({type(refused).__name__}: {error_first_line(refused)}); it may be running, billed: cancel it "
                f"with: python -c \"import modal; modal.FunctionCall.from_id('{call.object_id}').cancel()\"") from None
        raise missing_backend(f"modal: could not record call {call.object_id} in the run folder ({why}); the call "
                              "was cancelled, so nothing runs untracked; fix that and try again") from None


def copy_run_folder(volume, run_name: str, dest: Path) -> list[Path]:
    """Copy VOLUME/run_name/** into dest, file by file, each written whole or not at all: the
    files the job wrote that dest lacks or holds in another version (a resumed run's metrics,
    its summary). Nothing in dest is deleted, and what only this side keeps (the submission
    record, job/) is never touched."""
    from modal.types import FileEntryType

    from runner.runs.files import atomic_write_chunks, is_interrupted_write
    from runner.runs.paths import PRE_RUN

    copied = []
    for entry in volume.iterdir(run_name, recursive=True):
        if entry.type != FileEntryType.FILE:
            continue
        relative = PurePosixPath(entry.path.lstrip("/")).relative_to(run_name)
        if is_interrupted_write(relative) or relative.parts[0] in PRE_RUN:
            continue  # a write in progress when the job stopped; the remote side's own bookkeeping
        target = dest.joinpath(*relative.parts)
        if target.exists() and target.stat().st_size == entry.size and target.stat().st_mtime >= entry.mtime:
            continue  # fetched before
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_chunks(target, volume.read_file(entry.path))  # checkpoints can be large
        copied.append(target)
    return copied


