"""vast.ai's rental, where money is at stake: the instance's id reaches the run record before
anything else can happen (a record that cannot be written, Ctrl-C, a resume), a rent whose reply
is lost is sent once and leaves one instance (the real `vastai` SDK against a stand-in of vast.ai's
REST API), and a dry run against a silent vast.ai ends within its 15 s."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli
from tests.test_vast import DONE, GOOD, FakeVast, UploadingVast, fake_vast, started, vast_spec  # noqa: F401 (fixtures)


def _when_the_record_names(instance_id: int, monkeypatch, do) -> list[int]:
    """Call do() each time submission.json is written naming `instance_id`, before it is written
    (`do` may raise). Returns the list of those writes done so far, each appended after do()."""
    from runner.runs import record

    real, calls = record.atomic_write, []

    def write(path, *parts):
        if Path(path).name == "submission.json" and f'"vast_instance_id": {instance_id},' in b"".join(parts).decode():
            do()
            calls.append(instance_id)
        return real(path, *parts)

    monkeypatch.setattr(record, "atomic_write", write)
    return calls


def _handles(run: Path) -> dict:
    return json.loads((run / "submission.json").read_text())["handles"]


def _disk_full():
    raise OSError(errno.ENOSPC, "No space left on device")


# ---- item 1: the id is recorded before anything else can happen -------------------------------


def test_a_record_that_cannot_be_written_after_renting_still_destroys_the_instance(vast_spec, fake_vast, tmp_path,
                                                                                  monkeypatch):
    fake = fake_vast(FakeVast(timeline=DONE))
    _when_the_record_names(42, monkeypatch, _disk_full)
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert ("destroy", 42) in fake.calls and not fake.made  # nothing left billing
    *_, last = result.stderr.strip().splitlines()
    assert "No space left on device" in last and "gpujob must be able to write its run folder" in last
    assert "destroyed instance 42" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_while_the_rental_is_recorded_is_held_until_the_id_is_written(vast_spec, fake_vast, tmp_path,
                                                                             monkeypatch):
    fake = fake_vast(FakeVast(timeline=DONE))
    tried = _when_the_record_names(42, monkeypatch, lambda: tried or os.kill(os.getpid(), signal.SIGINT))
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert tried and result.exit_code == 130, (result.exit_code, result.stderr, result.exception)
    assert fake.names().count("create") == 1 and ("destroy", 42) in fake.calls and not fake.made
    assert "show" not in fake.names()  # the held Ctrl-C stops the rental before anything else is asked
    (run,) = (tmp_path / "runs").iterdir()
    handles = _handles(run)
    assert handles["vast_instance_id"] == 42 and handles["destroyed"] is True
    assert "instance 42 was destroyed" in result.stderr.strip().splitlines()[-1]
    assert json.loads((run / "cost.json").read_text())["billed_s"] == 0


def test_a_resume_whose_record_fails_destroys_its_new_instance_not_the_old_one(vast_spec, fake_vast, tmp_path,
                                                                             monkeypatch):
    stopped = started("step 3/9", "gpujob: stopped at step 3 by SIGTERM", code=143)
    fake = fake_vast(FakeVast(timeline=[("running", stopped)]))
    first = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert first.exit_code == 143, first.stderr
    run = first.run_dir
    assert fake.calls.count(("destroy", 42)) == 1 and not fake.made
    fake.new_id = 43  # the resume's instance
    _when_the_record_names(43, monkeypatch, _disk_full)
    resumed = cli("resume", run)
    assert resumed.exit_code == 2, (resumed.stderr, resumed.exception)
    assert ("destroy", 43) in fake.calls and not fake.made  # the new one, not left billing
    assert fake.calls.count(("destroy", 42)) == 1  # the old one, long gone, is not asked about again
    assert "still billed" not in resumed.stderr and "could not destroy" not in resumed.stderr


def test_a_resume_first_brings_back_and_destroys_an_instance_left_billing(vast_spec, fake_vast, tmp_path):
    """A job whose instance could not be destroyed (vast.ai did not answer for minutes): its disk
    may hold a later checkpoint than the folder here, and it bills. `resume` copies it back and
    destroys it before renting the next one, so the record never loses the only id it had."""
    stopped = started("step 3/9", "gpujob: stopped at step 3 by SIGTERM", code=143)
    fake = fake_vast(UploadingVast(timeline=[("running", stopped)], flaky={"destroy": 10_000}))
    first = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert first.exit_code == 1 and "it is still billed" in first.stderr, first.stderr
    run = first.run_dir
    assert 42 in fake.made and _handles(run)["destroyed"] is False
    fake.flaky["destroy"], fake.new_id = 0, 43  # vast.ai answers again
    asked_before = len(fake.calls)
    resumed = cli("resume", run)
    assert resumed.exit_code == 143, (resumed.stderr, resumed.exception)
    names = [call[:2] for call in fake.calls[asked_before:] if call[0] in ("copy", "destroy", "create")]
    assert names.index(("destroy", 42)) < names.index(("create", 13))  # the old one first
    assert names.index(("copy", 42)) < names.index(("destroy", 42))  # what its disk held comes back
    assert not fake.made and _handles(run)["vast_instance_id"] == 43


def test_a_second_ctrl_c_while_destroying_ends_naming_the_instance_that_may_still_bill(vast_spec, fake_vast, tmp_path):
    # The first Ctrl-C while following; vast.ai then does not answer the destroy, and the user
    # presses Ctrl-C again during its retries.
    fake = fake_vast(FakeVast(timeline=[("loading", []), ("running", started("step 1/9"))], interrupt_at=1,
                              flaky={"destroy": 10_000}))
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 130, (result.stderr, result.exception)
    assert 42 in fake.made and fake.names().count("destroy") == 1  # interrupted in its first retry's wait
    last = result.stderr.strip().splitlines()[-1]
    assert "instance 42" in last and "may still be billed" in last and "vastai destroy instance 42" in last, last
    assert "was destroyed" not in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert _handles(run)["destroyed"] is False and _handles(run)["vast_instance_id"] == 42


def test_a_rental_cut_off_before_its_id_was_recorded_is_found_by_its_label(vast_spec, fake_vast, tmp_path):
    """A gpujob killed between the rent and the record (kill -9, a power cut) leaves a record
    with the label and no id: `cancel` finds the instance by the label and destroys it."""
    from runner.runs import record as run_record

    fake = fake_vast(FakeVast(timeline=[("loading", []), ("running", started("step 1/9"))]))
    run = cli("submit", vast_spec(), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    run_record.update(run, handles={"vast_instance_id": None})  # as the record stood just before the rent
    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert ("destroy", 42) in fake.calls and not fake.made
    assert _handles(run)["vast_instance_id"] == 42 and _handles(run)["destroyed"] is True


def test_a_refused_rent_leaves_no_run_folder_and_nothing_billed(vast_spec, fake_vast, tmp_path):
    """The label is in the record before vast.ai is asked; when nothing was rented (vast.ai said
    no, and nothing carries the label) the record is as it was, and the submission leaves nothing."""
    fake = fake_vast(FakeVast(timeline=DONE, fail={"create"}))
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "create failed" in result.stderr, result.stderr
    assert fake.names()[-2:] == ["create", "list"] and not fake.made  # looked for, none found
    assert not (tmp_path / "runs").exists()


# ---- item 2: a rent is sent once; what a lost reply rented is found and kept to one ---------------


def _gpujob_against(url: str, rsync, home: Path, *args, call_timeout_s: float = 3) -> subprocess.CompletedProcess:
    """`gpujob ARGS` in a fresh process whose vastai SDK talks to `url` (VAST_URL, as the SDK reads
    it), with each HTTP request's timeout shortened to `call_timeout_s` (120 s by default)."""
    code = ("import sys, runner.backends.vast.api as api; "
            f"api.CALL_TIMEOUT_S = {call_timeout_s}; "
            f"from runner.cli.main import app; app({[str(a) for a in args]!r})")
    env = {**os.environ, "VAST_API_KEY": "vast-stand-in-key", "VAST_URL": url, "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / ".config"), "PATH": f"{rsync.bin}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=420,
                          env=env)


@pytest.fixture
def rsync(tmp_path):
    from tests.vast_standin import FakeRsync

    return FakeRsync(tmp_path / "rsync")


@pytest.mark.parametrize("lost", ["timeout", "504"])
def test_a_rent_whose_reply_is_lost_is_sent_once_and_leaves_one_instance(vast_spec, rsync, tmp_path, lost):
    from tests.vast_standin import VastRest

    vast = VastRest(GOOD, lose_first_reply=lost)
    with vast as url:
        out = _gpujob_against(url, rsync, tmp_path, "submit", vast_spec(), "--detach", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr
    assert vast.puts() == ["/api/v0/asks/13/"]  # sent once: neither the SDK nor gpujob asked again
    run = Path(out.stdout.strip().splitlines()[-1])
    assert vast.alive() == [_handles(run)["vast_instance_id"]] == [7001]  # one instance, and it is the recorded one


def test_a_lost_rent_that_shows_late_is_destroyed_once_another_is_recorded(vast_spec, rsync, tmp_path):
    """vast.ai's list may not show the instance a lost reply made: gpujob asks again (once it has
    looked), records what that rent made, and destroys every other instance with the run's label."""
    from tests.vast_standin import VastRest

    vast = VastRest(GOOD, lose_first_reply="504", listed_late=1)
    with vast as url:
        out = _gpujob_against(url, rsync, tmp_path, "submit", vast_spec(), "--detach", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr
    run = Path(out.stdout.strip().splitlines()[-1])
    assert vast.alive() == [_handles(run)["vast_instance_id"]] == [7002]
    asked = [(m, p) for m, p in vast.requests if p.startswith(("/api/v0/asks/", "/api/v1/instances/", "/api/v0/inst"))]
    assert asked[:3] == [("PUT", "/api/v0/asks/13/"), ("GET", "/api/v1/instances/"), ("PUT", "/api/v0/asks/13/")]
    assert ("DELETE", "/api/v0/instances/7001/") in asked and "destroyed instance 7001" in out.stderr


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
