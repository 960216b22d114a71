"""vast.ai when a user waits for its answer: a dry run against a vast.ai that never answers ends
within its 15 s."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from tests.test_vast import vast_spec  # noqa: F401 (a fixture)


# ---- item 3: a dry run against a vast.ai that never answers ends within 15 s ------------------------


@pytest.fixture
def silent_server():
    """A server that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def refusing_server():
    """vast.ai answering at once that the key is refused (401): a definite answer, exit 3."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def _refuse(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_DELETE = _refuse

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _timed_gpujob(*args, **env) -> tuple[subprocess.CompletedProcess, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAST_")}
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=420, env={**clean, **env})
    return out, time.monotonic() - began


def test_a_dry_run_against_a_vast_ai_that_never_answers_ends_within_15_s(vast_spec, tmp_path, silent_server,
                                                                        refusing_server):
    command = ("submit", vast_spec(), "--backend", "vast", "--dry-run")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"), "VAST_API_KEY": "vast-key-x"}
    # The same command against a vast.ai that answers at once (the key refused): Python's, the
    # CLI's, the SDK's and the spec's start-up on this machine now, allowed on top of the 15 s.
    refused, start_up = _timed_gpujob(*command, **env, VAST_URL=refusing_server)
    assert refused.returncode == 3 and "the API key was refused (401)" in refused.stderr, refused.stderr
    out, took = _timed_gpujob(*command, **env, VAST_URL=silent_server)
    print(f"dry run against a silent vast.ai: {took:.1f} s (against one that answers at once: {start_up:.1f} s)")
    assert out.returncode == 3, (out.returncode, out.stderr)
    (line,) = out.stderr.strip().splitlines()  # one line, and nothing on stdout
    assert line.startswith("gpujob: vast: searching offers: ") and "vast.ai has not answered for" in line, line
    assert out.stdout == "" and "vast-key-x" not in out.stderr
    assert took <= start_up + 15 + 1, (took, start_up)
