"""The vast.ai calls gpujob makes, behind one small class (VastApi), so tests can put a fake
object with the same methods in its place. Wraps the `vastai` SDK (gpujob's `vast` extra).

Copying the run folder back is vast.ai's own `vastai copy INSTANCE:/path local/path`: the API
opens an rsync endpoint on the host, and rsync over ssh fetches from it, authenticated by an
ssh key registered with the account (`vastai create ssh-key`). It works on a stopped instance
too, which is what the container is once the job has exited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from runner.errors import MISSING_BACKEND, GpujobError, error_first_line, job_failed, missing_backend
from runner.invocation import command, commands_in

RSYNC_TIMEOUT_S = 3600
# Each HTTP request's connect and read timeout: the SDK's own default, long enough for a rent.
CALL_TIMEOUT_S = 120.0
RSYNC_NETWORK_CODES = (10, 12, 30, 35, 255)  # rsync's socket, protocol-stream and timeout errors; ssh's 255
NO_API_KEY = "vast: no API key; run `vastai set api-key KEY` or set VAST_API_KEY"


def find_api_key() -> str | None:
    """The key the vastai CLI and SDK would use, looked up in their order: VAST_API_KEY, then
    $XDG_CONFIG_HOME/vastai/vast_api_key (default ~/.config/...), then ~/.vast_api_key."""
    if os.environ.get("VAST_API_KEY"):
        return os.environ["VAST_API_KEY"]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for path in (config / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"):
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def require_copy_tools() -> None:
    for tool, package in (("rsync", "rsync"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            raise missing_backend(f"vast: copying the run folder back needs {tool} here; install it "
                                  f"(e.g. apt install {package})")


class VastUnavailable(GpujobError):
    """vast.ai did not answer this time (a timeout, 429, a 5xx, a dropped connection, a reply of
    the wrong shape): worth asking again. Exit 3 once it has lasted (runner/backends/vast/patience.py)."""

    def __init__(self, message: str):
        super().__init__(message, MISSING_BACKEND)


@contextmanager
def _calling(what: str):
    """vast.ai's HTTP and SDK errors, as one line naming the call that failed: definite answers
    (a refused key, another 4xx) as they are, passing trouble as VastUnavailable."""
    import requests

    try:
        yield
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise missing_backend(f"vast: the API key was refused ({status}) while {what}; "
                                  f"set a valid one with `{command('vastai set api-key KEY')}`") from None
        if status is None or status == 429 or status >= 500:
            raise VastUnavailable(f"vast: {what}: vast.ai answered HTTP {status}") from None
        raise job_failed(f"vast: {what} failed: {_first_line(err)}") from None
    except (requests.ConnectionError, requests.Timeout, TimeoutError, ConnectionError) as err:
        raise VastUnavailable(f"vast: {what}: cannot reach vast.ai ({type(err).__name__})") from None
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as err:
        raise VastUnavailable(f"vast: {what}: an unexpected reply ({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return error_first_line(err, 200)  # a proxy's HTML page can be one long line


def _shaped(reply, kind: type, what: str):
    """A reply of the shape the call returns, or VastUnavailable (a proxy's HTML page, a half reply)."""
    if not isinstance(reply, kind):
        raise VastUnavailable(f"vast: {what}: an unexpected reply ({type(reply).__name__}, not {kind.__name__})")
    return reply


class VastService(Protocol):
    """What the backend asks of vast.ai, one method per request: VastApi through the SDK, and the
    tests' stand-in (tests/vast_standin.py LocalVast), which mypy checks against this."""

    def search_offers(self, query: str, offer_type: str, disk_gb: float, order: str) -> list[dict]: ...
    def check_can_copy(self) -> None: ...
    def create_instance(self, offer_id: int, request: dict) -> int: ...
    def instances_labelled(self, label: str) -> list[int]: ...
    def show_instance(self, instance_id: int) -> dict: ...
    def logs(self, instance_id: int, tail: int = 1000) -> str: ...
    def copy_back(self, instance_id: int, remote_dir: str, local_dir: Path, exclude: tuple[str, ...] = ()) -> None: ...
    def copy_to(self, instance_id: int, local_path: Path, remote_path: str, exclude: tuple[str, ...] = ()) -> None: ...
    def stop_instance(self, instance_id: int) -> None: ...
    def destroy_instance(self, instance_id: int) -> None: ...


class VastApi:
    def __init__(self, sdk):
        self.sdk = sdk

    @classmethod
    def connect(cls, timeout_s: float | None = None) -> "VastApi":
        """The SDK with the account's key, each request sent once and given up after `timeout_s`
        (default CALL_TIMEOUT_S). The SDK would send a request again itself (retry=3) after a
        timeout, a dropped connection, 429 or 502-504: for a rent (PUT /asks/ID/) whose reply was
        lost, that rents a second instance while the first bills. Asking again is PatientApi's
        and the backend's, which look for the instance by its label before a rent is asked again."""
        key = find_api_key()
        if not key:
            raise missing_backend(commands_in(NO_API_KEY))
        try:
            from vastai import VastAI
        except ImportError:
            raise missing_backend("vast: the vastai package is not installed; install it with: "
                                  "uv sync --extra vast") from None
        sdk = VastAI(api_key=key, quiet=True, retry=1)
        sdk.client.timeout = timeout_s or CALL_TIMEOUT_S  # VastClient passes it to every request
        return cls(sdk)

    def search_offers(self, query: str, offer_type: str, disk_gb: float, order: str) -> list[dict]:
        with _calling("searching offers"):
            # storage: the disk to price into dph_total; `order` decides which 200 come back, so it
            # is what the choice is made on (min_bid for interruptible offers).
            reply = self.sdk.search_offers(query=query, type=offer_type, order=order, limit=200, storage=disk_gb)
        return list(_shaped(reply, list, "searching offers"))

    def check_can_copy(self) -> None:
        """Before renting anything: copying the run folder back needs rsync and ssh here and an
        ssh key on the account (vast.ai puts the account's keys on an instance when it is made)."""
        require_copy_tools()
        with _calling("listing your ssh keys"):
            keys = self.sdk.show_ssh_keys()
        if isinstance(keys, dict):  # some API versions wrap the list
            keys = next((value for value in keys.values() if isinstance(value, list)), [])
        if not keys:
            raise missing_backend("vast: your vast.ai account has no ssh key, and copying the run folder back "
                                  "needs one; add yours first: vastai create ssh-key ~/.ssh/id_ed25519.pub")

    def create_instance(self, offer_id: int, request: dict) -> int:
        with _calling(f"renting offer {offer_id}"):
            reply = self.sdk.create_instance(id=offer_id, **request)
        if not isinstance(reply, dict) or not reply.get("success") or "new_contract" not in reply:
            message = reply.get("msg") or reply.get("error") if isinstance(reply, dict) else reply
            raise job_failed(f"vast: renting offer {offer_id} failed: {message}")
        return int(reply["new_contract"])

    def instances_labelled(self, label: str) -> list[int]:
        with _calling("listing your instances"):
            rows = self.sdk.show_instances()
        return [int(row["id"]) for row in rows or [] if row.get("label") == label]

    def show_instance(self, instance_id: int) -> dict:
        """The instance's fields; {} once it is gone."""
        with _calling(f"reading instance {instance_id}"):
            reply = self.sdk.show_instance(id=instance_id)
        return _shaped(reply or {}, dict, f"reading instance {instance_id}")

    def logs(self, instance_id: int, tail: int = 1000) -> str:
        """The container's last `tail` lines of output; empty while vast.ai has none to give."""
        with _calling(f"reading the logs of instance {instance_id}"):
            text = self.sdk.logs(instance_id, tail=str(tail))
        return text if isinstance(text, str) else ""  # a dict is a "not ready" reply

    def copy_back(self, instance_id: int, remote_dir: str, local_dir: Path, exclude: tuple[str, ...] = ()) -> None:
        """Fetch remote_dir's contents into local_dir, as `vastai copy` does; top-level names in
        `exclude` are left alone on this side."""
        local_dir.mkdir(parents=True, exist_ok=True)
        reply = self._open_copy(instance_id, f"{instance_id}:{remote_dir.rstrip('/')}/", str(local_dir.resolve()))
        source = f"vastai_kaalia@{reply['src_addr']}::{instance_id}/{remote_dir.rstrip('/')}/"
        self._rsync(instance_id, reply["src_port"], source, f"{local_dir.resolve()}/", exclude)

    def copy_to(self, instance_id: int, local_path: Path, remote_path: str, exclude: tuple[str, ...] = ()) -> None:
        """Send a local folder's contents (or one file) to remote_path on the instance."""
        source = f"{Path(local_path).resolve()}/" if Path(local_path).is_dir() else str(Path(local_path).resolve())
        remote = f"{remote_path.rstrip('/')}/" if Path(local_path).is_dir() else remote_path
        reply = self._open_copy(instance_id, f"local:{source}", f"C.{instance_id}:{remote}")
        target = f"vastai_kaalia@{reply['dst_addr']}::{instance_id}/{remote}"
        self._rsync(instance_id, reply["dst_port"], source, target, exclude)

    def _open_copy(self, instance_id: int, src: str, dst: str) -> dict:
        require_copy_tools()
        with _calling(f"opening a copy with instance {instance_id}"):
            reply = self.sdk.copy(src, dst)
        if not isinstance(reply, dict) or not reply.get("success"):
            message = reply.get("msg", reply) if isinstance(reply, dict) else reply
            raise job_failed(f"vast: copying with instance {instance_id} was refused: {message}")
        return reply

    def _rsync(self, instance_id: int, port: int, source: str, target: str, exclude: tuple[str, ...]) -> None:
        ssh = f"ssh -p {port} -o StrictHostKeyChecking=no -o BatchMode=yes"
        skips = [f"--exclude=/{name}" for name in exclude]
        try:
            out = subprocess.run(["rsync", "-arz", "--partial", *skips, "-e", ssh, source, target],
                                 capture_output=True, text=True, timeout=RSYNC_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise job_failed(f"vast: rsync with instance {instance_id} took more than {RSYNC_TIMEOUT_S // 60} min "
                             "and was stopped") from None
        said = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no message"
        if out.returncode in RSYNC_NETWORK_CODES:  # the connection, not the files: worth another try
            raise VastUnavailable(f"vast: rsync with instance {instance_id} lost its connection (exit "
                                  f"{out.returncode}): {said}")
        if out.returncode != 0:
            raise job_failed(f"vast: rsync with instance {instance_id} failed (exit {out.returncode}): {said}")

    def stop_instance(self, instance_id: int) -> None:
        """Stop the container (SIGTERM, then SIGKILL after docker's grace): the job checkpoints."""
        with _calling(f"stopping instance {instance_id}"):
            reply = self.sdk.stop_instance(id=instance_id)
        if isinstance(reply, dict) and reply.get("success") is False:
            raise job_failed(f"vast: stopping instance {instance_id} was refused: {reply.get('msg', reply)}")

    def destroy_instance(self, instance_id: int) -> None:
        with _calling(f"destroying instance {instance_id}"):
            reply = self.sdk.destroy_instance(id=instance_id)
        if isinstance(reply, dict) and reply.get("success") is False:
            raise GpujobError(f"vast: destroying instance {instance_id} was refused: {reply.get('msg', reply)}", 1)
