"""vast.ai, stood in for by this machine: VastApi's methods, where an instance is the image's own
start script (images/vast-start.sh) run as a process, its disk a folder, `stop` the SIGTERM that
`docker stop` sends the container's first process, and `copy` the folder copy rsync would make;
rsync itself (FakeRsync); and vast.ai's REST API for the real `vastai` SDK (VastRest)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import REPO

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from runner.backends.vast.api import VastService


class LocalVast:
    def __init__(self, root: Path, offers: list[dict]):
        self.root, self.offers = root, offers
        self.instances: dict[int, dict] = {}
        self.calls: list[tuple] = []
        self.envs: list[dict] = []  # each rented instance's environment, as asked for

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def _disk(self, instance_id: int, remote: str) -> Path:
        return self.instances[instance_id]["disk"] / remote.lstrip("/")

    def search_offers(self, query, offer_type, disk_gb, order):
        self.calls.append(("search", query))
        return self.offers

    def check_can_copy(self):
        self.calls.append(("check copy",))

    def create_instance(self, offer_id, request):
        instance_id = 101 + len(self.instances)
        self.calls.append(("create", offer_id, instance_id))
        disk = self.root / f"instance-{instance_id}"
        (disk / "workspace").mkdir(parents=True)
        # Nothing of this machine's Python paths: the instance has only its image and what is sent to it.
        # The client's webhooks reach the instance only as the request's env, as vast.ai sets it.
        here = {k: v for k, v in os.environ.items() if k not in ("GPUJOB_CODE_PATHS", "PYTHONPATH", "GPUJOB_NOTIFY")}
        self.envs.append(dict(request["env"]))
        env = {**here, **request["env"], "HOME": str(disk), "PYTHONUNBUFFERED": "1",
               "GPUJOB_RUNS_DIR": str(disk / "workspace" / "runs"), "GPUJOB_JOB_DIR": str(disk / "workspace" / "job"),
               "GPUJOB_UPLOAD_WAIT_S": "120",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the image's gpujob
        with open(disk / "container.log", "wb") as log:
            proc = subprocess.Popen(["bash", str(REPO / "images" / "vast-start.sh")], env=env, cwd=disk,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.instances[instance_id] = {"proc": proc, "disk": disk, "label": request["label"], "destroyed": False}
        return instance_id

    def instances_labelled(self, label):
        return [i for i, inst in self.instances.items() if inst["label"] == label and not inst["destroyed"]]

    def show_instance(self, instance_id):
        self.calls.append(("show", instance_id))
        inst = self.instances.get(instance_id)
        if inst is None or inst["destroyed"]:
            return {}
        return {"actual_status": "running" if inst["proc"].poll() is None else "exited", "status_msg": ""}

    def logs(self, instance_id, tail=1000):
        """The last `tail` lines, as vastai logs --tail gives them."""
        inst = self.instances[instance_id]
        text = "" if inst["destroyed"] else (inst["disk"] / "container.log").read_text(errors="replace")
        return "".join(text.splitlines(keepends=True)[-tail:])

    def stop_instance(self, instance_id):
        self.calls.append(("stop", instance_id))
        inst = self.instances[instance_id]
        if inst["proc"].poll() is None:
            inst["proc"].send_signal(signal.SIGTERM)  # to the container's first process, as docker stop does

    def copy_back(self, instance_id, remote_dir, local_dir, exclude=()):
        self.calls.append(("copy", instance_id, remote_dir))
        _copy(self._disk(instance_id, remote_dir), Path(local_dir), exclude)

    def copy_to(self, instance_id, local_path, remote_path, exclude=()):
        self.calls.append(("upload", instance_id, remote_path))
        if self.instances[instance_id]["destroyed"]:  # vast.ai opens no copy with an instance it no longer has
            from runner.errors import job_failed

            raise job_failed(f"vast: copying with instance {instance_id} was refused: no such instance")
        target = self._disk(instance_id, remote_path)
        if Path(local_path).is_dir():
            _copy(Path(local_path), target, exclude)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_path, target)

    def destroy_instance(self, instance_id):
        self.calls.append(("destroy", instance_id))
        inst = self.instances[instance_id]
        if inst["proc"].poll() is None:
            os.killpg(inst["proc"].pid, signal.SIGKILL)
            inst["proc"].wait()
        inst["destroyed"] = True

    def wait_all(self):
        for inst in self.instances.values():
            inst["proc"].wait(timeout=300)


def _fits(vast: LocalVast) -> "VastService":
    """Never called: mypy checks here that the stand-in answers every request the backend makes,
    with the same parameters as VastApi (tests/test_sdk_contracts.py checks VastApi against the SDK)."""
    return vast


def _copy(source: Path, target: Path, exclude) -> None:
    """rsync -a SOURCE/ TARGET/ --exclude=/NAME...: what is there, over what is here."""
    target.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        raise AssertionError(f"rsync: {source} does not exist on the instance")
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if relative.parts[0] in exclude or path.is_dir():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)


# rsync as `vastai copy` runs it (runner/backends/vast/api.py: VastApi._rsync), standing in for the
# real one: it copies from the instance's disk (a folder here) and fails, when told to, the ways a
# copy over the network fails. Each run takes the next word of the plan file (none left: "ok"):
#   ok       copy everything
#   drop     copy half the files, then lose the connection (rsync's exit 12)
#   timeout  no data moves for rsync's I/O timeout (exit 30)
#   refused  ssh cannot connect (exit 255)
#   hang     never finish (VastApi stops it at RSYNC_TIMEOUT_S)
RSYNC = '''#!{python}
import os, shutil, sys, time
from pathlib import Path

plan_file = Path(os.environ["GPUJOB_FAKE_RSYNC_PLAN"])
plan = plan_file.read_text().split() if plan_file.exists() else []
what = plan[0] if plan else "ok"
plan_file.write_text(" ".join(plan[1:]))
with open(plan_file.with_suffix(".log"), "a") as log:
    log.write(what + " " + " ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
excluded = {{a.split("=/", 1)[1] for a in args if a.startswith("--exclude=/")}}
remote = args[-2].split("::", 1)[1].split("/", 1)[1].lstrip("/")  # ID/PATH/ after the host
source, target = Path(os.environ["GPUJOB_FAKE_RSYNC_DISK"]) / remote, Path(args[-1])
if what == "hang":
    time.sleep(600)
if what == "refused":
    print("ssh: connect to host 10.0.0.1 port 40022: Connection refused", file=sys.stderr)
    print("rsync error: unexplained error (code 255) at io.c(232) [Receiver=3.2.7]", file=sys.stderr)
    sys.exit(255)
if what == "timeout":
    print("[Receiver] io timeout after 600 seconds -- exiting", file=sys.stderr)
    print("rsync error: timeout in data send/receive (code 30) at io.c(201) [Receiver=3.2.7]", file=sys.stderr)
    sys.exit(30)
if not source.is_dir():
    print(f"rsync: [sender] change_dir \\"{{source}}\\" failed: No such file or directory (2)", file=sys.stderr)
    sys.exit(23)
files = sorted(p for p in source.rglob("*") if p.is_file() and p.relative_to(source).parts[0] not in excluded)
for path in files[:len(files) // 2] if what == "drop" else files:
    (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, target / path.relative_to(source))
if what == "drop":
    print("rsync: connection unexpectedly closed (1024 bytes received so far) [receiver]", file=sys.stderr)
    print("rsync error: error in rsync protocol data stream (code 12) at io.c(232) [receiver=3.2.7]", file=sys.stderr)
    sys.exit(12)
'''


class FakeRsync:
    """`rsync` and `ssh` first on PATH (put there with `install(monkeypatch)`); `plan(*words)` says
    how the next runs go; `disk` is the instance's disk."""

    def __init__(self, root: Path):
        self.bin, self.disk, self.plan_file = root / "bin", root / "disk", root / "rsync-plan.txt"
        self.bin.mkdir(parents=True)
        self.disk.mkdir()
        (self.bin / "rsync").write_text(RSYNC.format(python=sys.executable))
        (self.bin / "ssh").write_text("#!/bin/sh\nexit 255\n")  # rsync's -e; never run by the stand-in
        for tool in ("rsync", "ssh"):
            (self.bin / tool).chmod(0o755)

    def install(self, monkeypatch) -> "FakeRsync":
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("GPUJOB_FAKE_RSYNC_DISK", str(self.disk))
        monkeypatch.setenv("GPUJOB_FAKE_RSYNC_PLAN", str(self.plan_file))
        return self

    def plan(self, *words: str) -> None:
        self.plan_file.write_text(" ".join(words))

    def runs(self) -> list[str]:
        log = self.plan_file.with_suffix(".log")
        return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


class VastRest:
    """vast.ai's REST API, as the real `vastai` SDK calls it, served on 127.0.0.1 (point the SDK
    at it with VAST_URL): searching offers (POST /api/v0/bundles/), the account's ssh keys,
    renting (PUT /api/v0/asks/OFFER/), the paged instance list (GET /api/v1/instances/), one
    instance (GET /api/v0/instances/ID/) and destroying one (DELETE /api/v0/instances/ID/).
    Every request is kept in `requests` as (method, path), in the order they came.

    `lose_first_reply` is what happens to the first rent after vast.ai has made the instance:
    "timeout" holds the reply back until the client hangs up (its read timeout), "504" answers as
    a gateway whose upstream did not answer in time. `listed_late` hides a new instance from that
    many listings (vast.ai's list may lag the rent)."""

    def __init__(self, offers: list[dict], lose_first_reply: str | None = None, listed_late: int = 0):
        import threading

        self.offers, self.lose_first_reply, self.listed_late = offers, lose_first_reply, listed_late
        self.requests: list[tuple[str, str]] = []
        self.instances: dict[int, dict] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None  # while the stand-in serves (`with`)

    def alive(self) -> list[int]:
        return sorted(i for i, inst in self.instances.items() if not inst["destroyed"])

    def puts(self) -> list[str]:
        return [path for method, path in self.requests if method == "PUT"]

    def __enter__(self) -> str:
        import threading
        from http.server import ThreadingHTTPServer

        self.server = server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        assert self.server is not None, "__enter__ started it"
        self.server.shutdown()
        self.server.server_close()

    # ---- what each request does ----

    def rent(self, offer_id: int, body: dict) -> tuple[int, dict] | None:
        with self.lock:
            instance_id = 7001 + len(self.instances)
            self.instances[instance_id] = {"label": body.get("label"), "destroyed": False,
                                           "hidden": self.listed_late, "offer": offer_id}
            lost = self.lose_first_reply if len(self.instances) == 1 else None
        if lost == "504":
            return 504, {"error": "upstream request timeout"}
        if lost == "timeout":
            return None  # no reply: the handler waits for the client to hang up
        return 200, {"success": True, "new_contract": instance_id}

    def listing(self) -> dict:
        rows = []
        with self.lock:
            for instance_id, inst in sorted(self.instances.items()):
                if inst["destroyed"]:
                    continue
                if inst["hidden"] > 0:
                    inst["hidden"] -= 1
                    continue
                rows.append(self.row(instance_id))
        return {"instances": rows, "next_token": None, "total_instances": len(rows)}

    def row(self, instance_id: int) -> dict:
        inst = self.instances[instance_id]
        return {"id": instance_id, "label": inst["label"], "actual_status": "loading", "start_date": 1.7e9,
                "extra_env": [], "status_msg": ""}

    def one(self, instance_id: int) -> dict:
        inst = self.instances.get(instance_id)
        return {"instances": None if inst is None or inst["destroyed"] else self.row(instance_id)}

    def destroy(self, instance_id: int) -> tuple[int, dict]:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst["destroyed"]:
                return 404, {"success": False, "msg": "no such instance"}
            inst["destroyed"] = True
        return 200, {"success": True}


def _handler(vast: VastRest):
    import json
    import re
    import select
    import time
    from http.server import BaseHTTPRequestHandler
    from urllib.parse import urlsplit

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the test reads `requests`
            pass

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _answer(self, status: int, reply) -> None:
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _hold_until_the_client_hangs_up(self, limit_s: float = 300) -> None:
            ends = time.monotonic() + limit_s
            while time.monotonic() < ends:
                readable, _, _ = select.select([self.connection], [], [], 0.2)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return

        def _serve(self, method: str) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            with vast.lock:
                vast.requests.append((method, path))
            if method == "POST" and path == "/api/v0/bundles/":
                return self._answer(200, {"offers": vast.offers})
            if method == "GET" and path == "/api/v0/ssh/":
                return self._answer(200, [{"id": 1, "public_key": "ssh-ed25519 AAAA stand-in"}])
            if method == "GET" and path == "/api/v1/instances/":
                return self._answer(200, vast.listing())
            asked = re.fullmatch(r"/api/v0/asks/(\d+)/", path)
            if method == "PUT" and asked:
                answer = vast.rent(int(asked.group(1)), body)
                if answer is None:
                    return self._hold_until_the_client_hangs_up()
                return self._answer(*answer)
            instance = re.fullmatch(r"/api/v0/instances/(\d+)/", path)
            if method == "GET" and instance:
                return self._answer(200, vast.one(int(instance.group(1))))
            if method == "DELETE" and instance:
                return self._answer(*vast.destroy(int(instance.group(1))))
            self._answer(404, {"error": f"the stand-in has no {method} {path}"})

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_PUT(self):
            self._serve("PUT")

        def do_DELETE(self):
            self._serve("DELETE")

    return Handler
