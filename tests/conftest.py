from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.fashion_idx import write_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    """FashionMNIST-format IDX files (2000 train, 500 test) read by torchvision's own loader."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), 2000, 500)


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(name=..., model={...}, ...) -> path of a YAML spec in tmp_path."""

    def write(filename: str = "job.yaml", **sections) -> Path:
        sections = {"name": "test-job", **sections}  # name first, so section lines are predictable
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(sections, sort_keys=False))
        return path

    return write


@pytest.fixture
def fashion_spec(write_spec, fashion_root):
    def make(**overrides):
        sections = dict(
            model={"name": "mlp"},
            data={"dataset": "fashion_mnist", "root": str(fashion_root), "download": False, "batch_size": 50},
            optimizer={"name": "sgd", "lr": 0.05},
            train={"epochs": 3, "log_every_steps": 10},
        )
        sections.update(overrides)
        return write_spec(**sections)

    return make


@pytest.fixture
def use_backend():
    """use_backend(name, **deps): the backend everything asks for by that name, made with `deps`
    (a fake service, a test clock) through the registry, put back after the test."""
    from runner.backends import registry

    restores = []

    def use(name: str, **deps):
        backend = registry.create_backend(name, **deps)
        restores.append(registry.provide(backend))
        return backend

    yield use
    for restore in reversed(restores):
        restore()


def cli(*args: str) -> "CliResult":
    """Run the CLI in this process, as a user would type it."""
    from runner.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return CliResult(result.exit_code, result.stdout, result.stderr, result.exception)


def cli_subprocess(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path | None = None):
    """Run `gpujob` as a separate process: real exit codes, real stderr, no shared state."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)


class CliResult:
    def __init__(self, exit_code, stdout, stderr, exception):
        self.exit_code, self.stdout, self.stderr, self.exception = exit_code, stdout, stderr, exception

    @property
    def run_dir(self) -> Path:
        return Path(self.stdout.strip().splitlines()[-1])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_jsonl_if(path: Path) -> list[dict]:
    """read_jsonl of a file a job is still writing: [] before it exists, whole lines only."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def wait_for(condition, what: str, timeout: float = 180, poll: float = 0.1) -> None:
    """Wait until condition() holds; fail loudly, naming `what`, when the wait runs out (a loaded
    2-core machine is slow, never a reason to pass or to hang)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(poll)


GOLDEN = REPO / "tests" / "golden"


def assert_golden(name: str, text: str) -> None:
    """`text` equals the recorded tests/golden/NAME: what a backend sends, compared in review.
    GPUJOB_UPDATE_GOLDEN=1 rewrites the file (then read its diff before committing it)."""
    path = GOLDEN / name
    if os.environ.get("GPUJOB_UPDATE_GOLDEN") == "1" or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        if os.environ.get("GPUJOB_UPDATE_GOLDEN") != "1":
            raise AssertionError(f"{path} did not exist: written now; check it and commit it")
    assert text == path.read_text(), f"what is sent changed: compare with {path} (GPUJOB_UPDATE_GOLDEN=1 rewrites it)"


# ---- SLURM partition `multi`: two nodes, each in its own network namespace -----------------

SLURM_NODES = ("gpujob-node1", "gpujob-node2")  # as .ci/start-slurm-nodes.sh names them


@pytest.fixture(scope="session")
def slurm_nodes() -> tuple[str, str]:
    """The two-node cluster of .ci/start-slurm-nodes.sh (two slurmds, each in its own network
    namespace with its own hostname and address, under this machine's slurmctld), started here
    when SLURM is installed and this is root. Its node names."""
    import shutil

    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed here (sbatch not found); .ci/start-slurm-nodes.sh installs and starts it")

    def up() -> bool:
        shown = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %t"], capture_output=True, text=True,
                               timeout=30).stdout.split()
        states = dict(zip(shown[::2], shown[1::2]))
        return all(states.get(node) in ("idle", "mix", "alloc") and Path(f"/run/netns/{node}").exists()
                   for node in SLURM_NODES)

    start_if_down(up, "start-slurm-nodes.sh", "partition multi is down, and starting its nodes (network namespaces)")
    return SLURM_NODES


def start_if_down(up, script: str, what: str) -> None:
    """Unless up() holds: run .ci/SCRIPT (it needs root; a skip says so otherwise), then insist."""
    if up():
        return
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")
    started = subprocess.run(["bash", str(REPO / ".ci" / script)], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0 and up(), f"{script} did not bring it up:\n{started.stderr[-2000:]}"


# ---- the Docker image the docker tests (and the credential tests) run ---------------------

TAG = "gpujob:test"
BASE = os.environ.get("GPUJOB_TEST_BASE_IMAGE", "gpujob-base:bookworm")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _build(tag: str = TAG) -> tuple[subprocess.CompletedProcess, float]:
    import time

    args = ["image", "build", "--tag", tag, "--base-image", BASE] + (["--extra-ca", str(HOST_CA)] if HOST_CA.exists() else [])
    started = time.perf_counter()
    out = cli_subprocess(*args, timeout=1800)
    return out, time.perf_counter() - started


@pytest.fixture(scope="session")
def image() -> str:
    """gpujob's image, built once per test session on a base made here (no registry is reachable)."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode != 0:
        made = subprocess.run(["bash", str(REPO / "images" / "base" / "build-base.sh"), BASE],
                              capture_output=True, text=True, timeout=1800)
        assert made.returncode == 0, f"building the base image failed:\n{made.stdout}\n{made.stderr}"
    out, seconds = _build()
    assert out.returncode == 0, f"gpujob image build failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    print(f"\nimage build: {seconds:.1f} s")
    return TAG


# ---- the fast tier: `pytest -m "not slow"` ----------------------------------------------------
# slow_tests.txt lists the tests measured at 1 s or more in a full run (setup, call and teardown
# together: a module's engine or image fixture counts for the test that starts it), as
# tests/measure_slow.py writes it from `pytest --durations=0`. A new test is in the fast tier until
# the list is measured again.

SLOW_TESTS = Path(__file__).with_name("slow_tests.txt")


def pytest_collection_modifyitems(config, items):
    slow = set(SLOW_TESTS.read_text().splitlines()) if SLOW_TESTS.exists() else set()
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)


# ---- CI must not go green by skipping ------------------------------------------------------
# .ci/run sets GPUJOB_REQUIRE_ALL=1: there every engine a test needs (Docker, SLURM) has been
# started, so a skipped test means something CI should run did not run. Only tests/remote/ (real
# Modal and vast.ai accounts) may skip.

_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "tests/remote/" not in report.nodeid:
        _SKIPPED.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("GPUJOB_REQUIRE_ALL") == "1" and _SKIPPED:
        print("\nGPUJOB_REQUIRE_ALL: these tests skipped, and CI must run them all:\n  " + "\n  ".join(_SKIPPED))
        session.exitstatus = 1


def requeue_now(job_id: str, run: Path, before_restart=None) -> None:
    """What SLURM does to a preempted job (`scontrol requeue`: SIGTERM, back in the queue), then
    start it again at once: a requeued job waits two minutes before it may start, a test need
    not. A start in the same second as the requeue is refused (the nodes revoked the job's
    credential then), so the next but one. `before_restart`: what the test changes about the
    pending job first (the start time is set only once it is pending: SLURM sets its two
    minutes when the requeue completes, over a start time set earlier)."""
    requeued_at = time.time()
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait_for(lambda: "JobState=PENDING" in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True,
                                                          text=True).stdout, "the job back in the queue", 60)
    wait_for(lambda: (run / "job" / "exit-code").exists(), "the first run's batch script to end", 60)
    wait_for(lambda: time.time() >= int(requeued_at) + 2, "the second after the requeue's", 5)
    if before_restart is not None:
        before_restart()

    def may_start_now() -> bool:  # asked again if SLURM's two minutes landed after the ask
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        begins = re.search(r"\bStartTime=(\S+)", shown)
        return "JobState=PENDING" not in shown or not begins or begins[1] in ("Unknown", "None") or \
            datetime.fromisoformat(begins[1]).timestamp() <= time.time() + 1

    wait_for(may_start_now, "the requeued job allowed to start now", 30)


@pytest.fixture
def answering_data_source():
    """The environment of a process whose http:// requests reach a local proxy that answers every
    one with 200 and an empty body: a dataset's download source that answers (the dry run asks it
    with HEAD), on a machine that reaches no internet. Torchvision's and urllib's requests honour
    http_proxy."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}
    server.shutdown()
    server.server_close()
