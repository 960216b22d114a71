"""The modal backend, everything up to the network (Modal's servers are not reachable here).

What would be shipped is checked as built: the App, the image (the pinned requirements plus
gpujob's code), the function's GPU, timeout, retries and volume. The very function Modal
would run is called with Modal's `.local()` on tiny jobs, with the volume pointed at a
folder, one and two CPU workers. The client's flow (submit, --detach, status, fetch) runs
against LocalModal, ModalService's methods over this machine. Credentials and network
failures are checked through the CLI as a user meets them. tests/remote/ runs a real job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("modal", reason="the modal extra is not installed (uv sync --extra modal)")

from runner.backends import modal as modal_backend  # noqa: E402
from runner.backends.modal import RECORD, modal_request  # noqa: E402
from runner.backends.modal_app import REQUIREMENTS, VOLUME_PATH_ENV  # noqa: E402
from runner.backends.modal_service import CallState, copy_run_folder, modal_errors, outcome  # noqa: E402
from runner.errors import GpujobError  # noqa: E402
from runner.spec import load_spec  # noqa: E402
from tests.conftest import REPO, cli, read_jsonl  # noqa: E402

ARTIFACTS = ("spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json")
pytestmark = pytest.mark.filterwarnings("ignore:The train_remote function is executing locally")


@pytest.fixture
def modal_spec(write_spec):
    def make(gpu="A10G:1", processes=1, **sections):
        base = dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                    optimizer={"name": "sgd", "lr": 0.05},
                    train={"epochs": 1, "max_steps": 6, "log_every_steps": 2},
                    resources={"gpu": gpu, "processes": processes, "timeout_minutes": 20}, backend="modal")
        return write_spec(**{**base, **sections})

    return make


@pytest.fixture
def volume(tmp_path, monkeypatch) -> Path:
    """The folder train_remote takes for the Modal volume."""
    path = tmp_path / "volume"
    monkeypatch.setenv(VOLUME_PATH_ENV, str(path))
    return path


def _internal(obj):
    """Modal's objects behind their synchronous wrappers, to read what they hold."""
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(obj)


# ---- what would be shipped ------------------------------------------------------------


def test_the_function_takes_gpu_timeout_and_retries_from_the_spec(modal_spec):
    from runner.backends import modal_app

    request = modal_request(load_spec(modal_spec(gpu="A10G:2", processes=2)))
    assert (request.gpu, request.world_size, request.timeout_s, request.retries) == ("A10G:2", 2, 20 * 60 + 600, 3)
    options = _internal(request.function())._options
    assert options.resources.gpu_config.gpu_type == "A10G" and options.resources.gpu_config.count == 2
    assert options.timeout_secs == 1800
    assert options.retry_policy.retries == 3 and options.retry_policy.backoff_coefficient == 1.0

    base = _internal(modal_app.train_remote)
    assert base._app is _internal(modal_app.app) and modal_app.app.name == "gpujob"
    (mount_path, vol), = base._spec_.volumes.items()
    assert mount_path == "/runs" and _internal(vol)._name == "gpujob-runs"
    assert base._spec_.image is _internal(modal_app.image)

    cpu = modal_request(load_spec(modal_spec(gpu="cpu", processes=3)))
    assert cpu.gpu is None and cpu.world_size == 3 and "gpu" not in cpu.options()


def test_the_image_is_the_pinned_requirements_plus_gpujobs_own_code():
    from runner.backends import modal_app

    image = _internal(modal_app.image)
    base, source = image._deps()
    cells = dict(zip(base._load.__code__.co_freevars, (c.cell_contents for c in base._load.__closure__)))
    dockerfile = cells["dockerfile_function"]("2025.06")
    assert list(dockerfile.context_files.values()) == [str(REQUIREMENTS)]
    assert any("uv pip install" in c and "--requirements" in c for c in dockerfile.commands)
    assert modal_app.PYTHON_VERSION == "3.11"

    added = {str(remote) for entry in source._entries for _, remote in entry.get_files_to_upload()}
    assert {"/root/runner/backends/modal_app.py", "/root/runner/cli.py", "/root/runner/launch.py",
            "/root/runner/worker.py", "/root/runner/train.py"} <= added
    assert all(path.startswith("/root/runner/") and path.endswith(".py") for path in added)


def test_requirements_file_is_a_fresh_export_of_uv_lock(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed here: cannot export uv.lock")
    out = subprocess.run(["sh", "images/export-requirements.sh", str(tmp_path / "fresh.txt")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh.txt").read_text() == REQUIREMENTS.read_text(), \
        "images/requirements.txt is stale: run sh images/export-requirements.sh"


def test_dry_run_prints_the_call_the_image_and_the_cost(modal_spec, tmp_path):
    result = cli("submit", modal_spec(processes=2), "--gpu", "A10G:2", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines()
                if re.search(r"\S\s{2,}\S", line))
    assert rows["modal gpu"] == "A10G:2" and rows["world size"] == "2"
    assert rows["timeout"].startswith("1800 s per attempt")
    assert rows["retries"].startswith("3")
    assert "gpujob-runs at /runs" in rows["volume"]
    assert rows["call"] == ("app 'gpujob': train_remote.with_options(gpu='A10G:2', timeout=1800, retries=3)"
                            ".spawn(<spec yaml>, 'test-job-DATE-TIME')")
    from runner.gpus import PRICES_READ_ON

    assert rows["cost"].startswith("$2.20/h for A10G:2") and f"read {PRICES_READ_ON}" in rows["cost"]
    assert "images/requirements.txt" in rows["image"] and "torch 2." in rows["image"] and "runner" in rows["image"]
    assert "credentials" in rows and "dry steps" in rows
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, expected", [
    (["--gpu", "RTX4090:1"], "modal does not offer RTX4090; it offers: T4, L4, A10G, A100-40GB"),
    (["--gpu", "A10G:5"], "at most 4 A10G"),
    (["--set", "resources.nodes=2"], "resources.nodes"),
    (["--set", "resources.timeout_minutes=1500"], "24 h"),
    (["--set", "model.name=tests.plugins:tiny_mlp"], "ships only gpujob's own code"),
])
def test_what_modal_cannot_run_is_exit_2_before_anything_starts(modal_spec, tmp_path, args, expected):
    result = cli("submit", modal_spec(), *args, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


# ---- the shipped function, run here with .local() -------------------------------------


def test_the_shipped_function_trains_into_the_volume_and_a_rerun_resumes_nothing(modal_spec, volume):
    request = modal_request(load_spec(modal_spec()))
    assert request.function().local(request.spec_yaml, "tiny-1") == {"exit_code": 0, "message": ""}
    run = volume / "tiny-1"
    assert all((run / name).is_file() for name in ARTIFACTS)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 6
    before = (run / "summary.json").stat().st_mtime_ns
    # What Modal's restart of a finished input would do: nothing is trained again.
    assert request.function().local(request.spec_yaml, "tiny-1") == {"exit_code": 0, "message": ""}
    assert (run / "summary.json").stat().st_mtime_ns == before


def test_two_gpus_start_two_ddp_workers_through_the_launcher(modal_spec, volume):
    request = modal_request(load_spec(modal_spec(gpu="A10G:2", processes=2)))
    assert request.world_size == 2
    assert request.function().local(request.spec_yaml, "ddp-1")["exit_code"] == 0
    summary = json.loads((volume / "ddp-1" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["local_batch_size"] == 32
    assert all(e["allreduce_s"] > 0 for e in json.loads((volume / "ddp-1" / "timing.json").read_text())["epochs"])


def test_a_job_error_is_returned_not_raised_so_modal_does_not_retry_it(modal_spec, volume):
    spec = load_spec(modal_spec(optimizer={"name": "sgd", "lr": 1e12},
                                train={"epochs": 2, "log_every_steps": 1, "checkpoint_every_minutes": 0}))
    result = modal_request(spec).function().local(spec.to_yaml(), "nan-1")
    assert result["exit_code"] == 1 and "nan" in result["message"].lower()


DRIVER = """
import sys
from runner.backends.modal import modal_request
from runner.spec import load_spec  # noqa: E402
request = modal_request(load_spec(sys.argv[1]))
print(request.function().local(request.spec_yaml, sys.argv[2]), flush=True)
"""


def test_a_preempted_attempt_raises_so_modal_restarts_it_and_the_restart_resumes(modal_spec, volume):
    spec = modal_spec(train={"epochs": 400, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(spec), "long-1"], cwd=REPO, env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = volume / "long-1" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # how Modal tells a container it is being preempted
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Modal starts it again" in stderr, stderr[-2000:]
    assert list((volume / "long-1" / "checkpoints").glob("step-*.pt"))
    assert not (volume / "long-1" / "summary.json").exists()

    restarted = modal_request(load_spec(spec)).function().local(load_spec(spec).to_yaml(), "long-1")
    assert restarted["exit_code"] == 0
    assert json.loads((volume / "long-1" / "summary.json").read_text())["resumed"] == 1


# ---- the client's flow, against Modal's servers stood in for by this machine ---------


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
            yield FileEntry(path=str(p.relative_to(self.root)), type=kind, mtime=0, size=p.stat().st_size)

    def read_file(self, path: str):
        data = (self.root / path).read_bytes()
        for start in range(0, len(data), 4096):
            yield data[start:start + 4096]


class LocalModal:
    """ModalService's methods over this machine: a call runs the shipped function with .local()
    against the volume folder. `later=True` keeps detached calls pending until finish()."""

    def __init__(self, volume: Path, later: bool = False, interrupt: bool = False):
        self.volume, self.later, self.interrupt = volume, later, interrupt
        self.results: dict[str, dict] = {}
        self.pending: dict[str, tuple] = {}

    def run_names(self) -> set[str]:
        return {p.name for p in self.volume.iterdir()} if self.volume.exists() else set()

    def start(self, request, run_name, detach, spawned):
        call_id = f"fc-local-{len(self.results) + len(self.pending) + 1}"
        spawned(call_id)
        if self.interrupt:
            raise KeyboardInterrupt
        if detach and self.later:
            self.pending[call_id] = (request, run_name)
            return None
        self.results[call_id] = request.function().local(request.spec_yaml, run_name)
        return None if detach else outcome(self.results[call_id])

    def finish(self):
        for call_id, (request, run_name) in self.pending.items():
            self.results[call_id] = request.function().local(request.spec_yaml, run_name)
        self.pending.clear()

    def poll(self, call_id):
        return CallState("running") if call_id in self.pending else outcome(self.results[call_id])

    def download(self, run_name, dest):
        try:
            return copy_run_folder(FolderVolume(self.volume), run_name, dest)
        except FileNotFoundError:
            return []


@pytest.fixture
def local_modal(volume, monkeypatch):
    def use(**options) -> LocalModal:
        service = LocalModal(volume, **options)
        monkeypatch.setattr(modal_backend.BACKEND, "connect", lambda: service)
        return service

    return use


def test_submit_brings_the_run_folder_back_into_runs(modal_spec, local_modal, tmp_path):
    local_modal()
    result = cli("submit", modal_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    assert run.parent == tmp_path / "runs" and run.name.startswith("test-job-")
    assert all((run / name).is_file() for name in ARTIFACTS)
    assert list((run / "checkpoints").glob("step-*.pt"))
    assert "done: test_accuracy" in result.stdout
    record = json.loads((run / RECORD).read_text())
    assert record["call_id"] == "fc-local-1" and record["volume"] == "gpujob-runs" and record["gpu"] == "A10G:1"
    assert not any("token" in key for key in record)
    assert read_jsonl(run / "metrics.jsonl") == read_jsonl(tmp_path / "volume" / run.name / "metrics.jsonl")
    cost, summary = (json.loads((run / name).read_text()) for name in ("cost.json", "summary.json"))
    assert cost["price_per_hour_usd"] == 1.10 and cost["billed_s"] == round(summary["wall_s"], 1)
    assert cost["estimated_usd"] == round(1.10 * summary["wall_s"] / 3600, 4)


def test_detach_then_status_then_fetch(modal_spec, local_modal, tmp_path):
    service = local_modal(later=True)
    runs = tmp_path / "runs"
    submitted = cli("submit", modal_spec(), "--detach", "--runs-dir", runs)
    assert submitted.exit_code == 0, submitted.stderr
    assert "call fc-local-1" in submitted.stdout
    run = submitted.run_dir
    assert sorted(p.name for p in run.iterdir()) == [RECORD]

    assert cli("status", run.name, "--runs-dir", runs).stdout.strip() == f"{run.name}: running on Modal"
    early = cli("fetch", run)
    assert early.exit_code == 2 and "still running" in early.stderr

    service.finish()
    assert cli("status", run).stdout.strip() == f"{run.name}: finished"
    fetched = cli("fetch", run)
    assert fetched.exit_code == 0, fetched.stderr
    assert fetched.run_dir == run and all((run / name).is_file() for name in ARTIFACTS)

    (run / "summary.json").write_text("{\"kept\": true}")  # a local file is never overwritten
    again = cli("fetch", run)
    assert "copied 0 file(s)" in again.stderr
    assert json.loads((run / "summary.json").read_text()) == {"kept": True}


def test_a_failed_remote_job_comes_back_with_its_error_and_folder(modal_spec, local_modal, tmp_path):
    local_modal()
    spec = modal_spec(optimizer={"name": "sgd", "lr": 1e12},
                      train={"epochs": 2, "log_every_steps": 1, "checkpoint_every_minutes": 0})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert "nan" in result.stderr.lower() and "run folder: " in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "metrics.jsonl").exists() and not (run / "summary.json").exists()


def test_ctrl_c_stops_the_remote_job_and_says_how_to_get_its_folder(modal_spec, local_modal, tmp_path):
    local_modal(interrupt=True)
    result = cli("submit", modal_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 130
    assert "the remote job was stopped" in result.stderr and "gpujob fetch" in result.stderr


def test_detach_is_only_for_backends_that_can(modal_spec, tmp_path):
    result = cli("submit", modal_spec(), "--backend", "local", "--detach", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "--detach" in result.stderr


def test_status_of_a_folder_that_is_not_a_modal_run_is_exit_2(tmp_path):
    (tmp_path / "plain").mkdir()
    result = cli("status", tmp_path / "plain")
    assert result.exit_code == 2 and RECORD in result.stderr
    assert cli("fetch", "nowhere", "--runs-dir", tmp_path).exit_code == 2


# ---- credentials, the package, the network --------------------------------------------


def _gpujob(*args, home: Path, **env) -> subprocess.CompletedProcess:
    """`gpujob ARGS` in a fresh process whose only Modal settings are HOME (for ~/.modal.toml) and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**clean, "HOME": str(home), **env})


def test_without_credentials_submit_is_exit_3_with_one_line(modal_spec, tmp_path):
    (tmp_path / "home").mkdir()
    out = _gpujob("submit", modal_spec(), "--backend", "modal", "--runs-dir", tmp_path / "runs", home=tmp_path / "home")
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == [
        "gpujob: modal: no credentials; run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"]
    assert not (tmp_path / "runs").exists()


def test_without_the_modal_package_submit_is_exit_3_saying_how_to_install_it(modal_spec, tmp_path):
    code = ("import sys; sys.modules['modal'] = None; from runner.cli import app; "
            f"app(['submit', {str(modal_spec())!r}, '--runs-dir', {str(tmp_path / 'runs')!r}])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == [
        "gpujob: modal: the modal package is not installed; install it with `uv sync --extra modal` "
        "(or `pip install 'gpujob[modal]'`)"]


@pytest.fixture
def dropping_server():
    """A TCP server that accepts and hangs up: a network that fails mid-conversation."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_network_failure_is_exit_3_with_one_line_and_never_shows_the_token(modal_spec, tmp_path, dropping_server):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".modal.toml").write_text('[default]\ntoken_id = "ak-not-a-real-id"\n'
                                      'token_secret = "as-not-a-real-secret"\n')
    out = _gpujob("submit", modal_spec(), "--runs-dir", tmp_path / "runs", home=home, MODAL_SERVER_URL=dropping_server)
    assert out.returncode == 3, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("gpujob: modal: cannot reach Modal") and "check your network" in line
    assert "ak-not-a-real-id" not in out.stdout + out.stderr and "as-not-a-real-secret" not in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists()

    dry = _gpujob("submit", modal_spec(), "--dry-run", home=home, MODAL_SERVER_URL=dropping_server)
    assert dry.returncode == 0 and f"from {home / '.modal.toml'}" in dry.stdout  # found, never shown
    assert "not-a-real" not in dry.stdout + dry.stderr


def test_modal_errors_become_one_line_gpujob_errors():
    import modal.exception

    cases = [(modal.exception.AuthError("Token ID is malformed"), 3, "run `modal token new`"),
             (modal.exception.ConnectionError("Could not connect to the Modal server."), 3, "cannot reach Modal"),
             (modal.exception.ExecutionError("Image build failed"), 1,
              "running the job failed: ExecutionError: Image build failed")]
    for raised, code, words in cases:
        with pytest.raises(GpujobError) as caught, modal_errors("running the job"):
            raise raised
        assert caught.value.exit_code == code and words in caught.value.message
        assert "\n" not in caught.value.message
