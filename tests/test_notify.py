"""Notifications (issue 26): the job itself tells the user's webhooks when it starts and ends,
with the result; a webhook that fails, refuses or hangs never fails or holds the job; and a
webhook URL, a credential, lands in no file of the run folder and is printed masked.

The webhook is a real HTTP server on 127.0.0.1 (Receiver) that answers as each test plans:
200, 500, 429 with Retry-After, 404, or no answer at all."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.reports.notify import FINAL_WAIT_S, NOTIFY_ENV, Notifier, masked
from tests.conftest import cli
from tests.test_slurm import slurm_cluster  # noqa: F401  (a fixture)

SECRET = "T0PSECRET-hook-token"


class Receiver:
    """A webhook on 127.0.0.1. `plan` holds how the next requests are answered, one each:
    200 (the default once it is empty), another status, (429, seconds) with Retry-After, or
    "hang" (no answer until the test ends)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.plan: list = []
        self.bodies: list[tuple[str, dict]] = []  # (path, body) of every request, answered or not
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.bodies.append((self.path, body))
                    answer = receiver.plan.pop(0) if receiver.plan else 200
                if answer == "hang":
                    receiver.release.wait(120)
                    return
                status, retry_after = answer if isinstance(answer, tuple) else (answer, None)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = f"/hook/{SECRET}") -> str:
        return f"http://{self.host}:{self.server.server_port}{path}"

    def events(self, path: str | None = None) -> list[str]:
        return [body["event"] for where, body in self.bodies if path is None or where == path]

    def body(self, event: str) -> dict:
        return next(body for _, body in self.bodies if body.get("event") == event)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    # submit puts the webhooks in this process's environment (where the backends take them from):
    # monkeypatch puts it back as it was after the test
    monkeypatch.setenv(NOTIFY_ENV, "")
    made = Receiver()
    yield made
    made.close()


def _no_secret_in(folder: Path, *texts: str, secret: str = SECRET) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the webhook URL is in {path}"
    for text in texts:
        assert secret not in text


def _has_tensorboard_events(run: Path) -> None:
    """The run's TensorBoard events, read back with TensorBoard's own reader, where it is installed."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "step"]
    assert [e.step for e in events.Scalars("step/loss")] == steps


def _digits(write_spec, **sections):
    base = dict(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                train={"epochs": 2, "log_every_steps": 10})
    return write_spec(**{**base, **sections})


# ---- a local run, end to end ------------------------------------------------------------


def test_a_local_run_tells_started_and_finished_with_the_result_and_keeps_the_url_out(write_spec, receiver, tmp_path):
    spec_url, option_url = receiver.url(f"/spec/{SECRET}"), receiver.url(f"/option/{SECRET}")
    spec = _digits(write_spec, notify=[spec_url])
    result = cli("submit", spec, "--notify", option_url, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    for path in (f"/spec/{SECRET}", f"/option/{SECRET}"):  # the spec's webhook and --notify's, each told once
        assert receiver.events(path) == ["started", "finished"]
    started, finished = receiver.body("started"), receiver.body("finished")
    assert started["run"] == run.name and started["backend"] == "local" and started["epochs"] == {"done": 0, "total": 2}
    summary = json.loads((run / "summary.json").read_text())
    assert finished["state"] == "finished" and finished["exit_code"] == 0 and finished["epochs"] == {"done": 2, "total": 2}
    assert finished["metrics"]["test_accuracy"] == summary["test_accuracy"]
    assert finished["metrics"]["test_loss"] == summary["test_loss"]
    assert finished["diagnosis"] is None or finished["diagnosis"].split(":")[0] == summary["diagnosis"][0]["kind"]
    assert finished["cost_so_far_usd"] is None  # this machine is nobody's rented GPU
    png = finished["loss_curve_png"]
    assert png.startswith("data:image/png;base64,")
    assert base64.b64decode(png.split(",", 1)[1]) == (run / "loss_curve.png").read_bytes()
    # a credential: in no file of the run folder (spec.yaml, job/spec.yaml, the request, the logs), never printed
    assert "notify" not in (run / "spec.yaml").read_text() and "notify" not in (run / "job" / "spec.yaml").read_text()
    _no_secret_in(run, result.stdout, result.stderr)
    shown = cli("validate", spec)
    assert shown.exit_code == 0 and SECRET not in shown.stdout


def test_a_failed_job_says_so_with_its_exit_code_and_error(write_spec, receiver, tmp_path):
    (tmp_path / "boom.py").write_text("def step(model, batch):\n    raise RuntimeError('boom at the first step')\n")
    spec = _digits(write_spec, train={"epochs": 1, "step": "boom:step"})
    result = cli("submit", spec, "--notify", receiver.url(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert receiver.events() == ["started", "failed"]
    failed = receiver.body("failed")
    assert failed["exit_code"] == 1 and "RuntimeError: boom at the first step" in failed["message"]
    assert failed["loss_curve_png"] is None  # none was drawn
    _no_secret_in(result.run_dir, result.stdout, result.stderr)


def test_a_detached_run_tells_its_stop_and_its_resume_with_the_webhooks_the_resume_is_given(write_spec, receiver,
                                                                                           tmp_path, monkeypatch):
    from tests.conftest import read_jsonl_if, wait_for

    spec = _digits(write_spec, train={"epochs": 400, "max_steps": 300, "log_every_steps": 5})
    submitted = cli("submit", spec, "--detach", "--notify", receiver.url(), "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2 and receiver.events() == ["started"],
             "the detached job's steps and its started notification")
    assert cli("cancel", run).exit_code == 0
    wait_for(lambda: len(receiver.events()) == 2, "the stop's notification")
    stopped = receiver.bodies[1][1]
    assert stopped["state"] == "preempted" and stopped["exit_code"] == 143  # SIGTERM: the job cannot tell a cancel
    assert "checkpoint saved" in stopped["message"]
    # a resume tells the webhooks it is given: none are kept with the run
    monkeypatch.setenv(NOTIFY_ENV, "")
    resumed = cli("resume", run, "--notify", receiver.url())
    assert resumed.exit_code == 0, resumed.stderr
    assert receiver.events() == ["started", "preempted", "resumed", "finished"]
    assert receiver.body("finished")["epochs"]["done"] == json.loads((run / "summary.json").read_text())["epochs"]
    _no_secret_in(run, submitted.stdout, resumed.stdout, resumed.stderr)


@pytest.mark.parametrize("args, field", [(["--notify", f"ftp://example.com/{SECRET}"], "--notify"),
                                         (["--notify", "hooks.slack.com/services/x"], "--notify")])
def test_a_bad_webhook_url_is_exit_2_naming_the_option_and_masking_it(write_spec, receiver, tmp_path, args, field):
    result = cli("submit", _digits(write_spec), *args, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.stderr.startswith(f"gpujob: {field}: ")
    assert SECRET not in result.stderr and not (tmp_path / "runs").exists()


def test_a_bad_webhook_in_the_spec_is_exit_2_naming_notify(write_spec, tmp_path):
    result = cli("validate", _digits(write_spec, notify=["not a url"]))
    assert result.exit_code == 2 and "notify" in result.stderr and "webhook URL" in result.stderr


def test_a_hanging_webhook_holds_the_jobs_end_back_at_most_the_final_wait(write_spec, receiver, tmp_path):
    receiver.plan = ["hang"] * 10
    result = cli("submit", _digits(write_spec), "--notify", receiver.url(), "--runs-dir", tmp_path / "runs")
    ended = time.time()
    assert result.exit_code == 0, result.stderr
    summary_written = (result.run_dir / "summary.json").stat().st_mtime
    # summary.json is the job's last result; past it the webhook may hold the process FINAL_WAIT_S,
    # plus the launcher's and the CLI's own end (generous: a loaded machine)
    assert ended - summary_written < FINAL_WAIT_S + 15
    warnings = [line for line in result.stderr.splitlines() if "warning: notification" in line]
    assert len(warnings) == 2 and all("(the job is not affected)" in line for line in warnings)
    assert all(f"127.0.0.1:{receiver.server.server_port}/***" in line and SECRET not in line for line in warnings)


# ---- the sender: retries, Retry-After, hangs, one warning -------------------------------


def _notifier(receiver, warnings, sleeps=None, **options) -> Notifier:
    sleep = sleeps.append if sleeps is not None else time.sleep
    return Notifier([receiver.url()], warn=warnings.append, sleep=sleep, **options)


def test_500s_are_retried_with_backoff_until_delivered(receiver):
    receiver.plan = [500, 503]
    warnings, sleeps = [], []
    notifier = _notifier(receiver, warnings, sleeps)
    notifier.send("finished", lambda url: {"event": "finished"})
    notifier.wait(30)
    assert receiver.events() == ["finished"] * 3 and warnings == [] and sleeps == [1.0, 2.0]


def test_a_receiver_hears_the_events_in_their_order_even_while_one_is_retried(receiver):
    receiver.plan = [503]
    warnings: list[str] = []
    notifier = _notifier(receiver, warnings, try_timeout_s=5, retry_for_s=30)
    notifier.send("started", lambda url: {"event": "started"})
    notifier.send("finished", lambda url: {"event": "finished"})
    notifier.wait(30)
    assert receiver.events() == ["started", "started", "finished"] and warnings == []


def test_a_429_waits_what_retry_after_asks(receiver):
    receiver.plan = [(429, 7)]
    warnings, sleeps = [], []
    notifier = _notifier(receiver, warnings, sleeps)
    notifier.send("started", lambda url: {"event": "started"})
    notifier.wait(30)
    assert receiver.events() == ["started"] * 2 and sleeps == [7.0] and warnings == []


def test_a_refusal_that_will_not_change_is_not_retried_and_warned_once(receiver):
    receiver.plan = [404]
    warnings: list[str] = []
    notifier = _notifier(receiver, warnings, [])
    notifier.send("finished", lambda url: {"event": "finished"})
    notifier.wait(30)
    assert receiver.events() == ["finished"] and len(warnings) == 1 and "HTTP 404; not retried" in warnings[0]
    assert SECRET not in warnings[0]


def test_retries_stop_after_their_bound_with_one_warning(receiver):
    receiver.plan = [500] * 100
    warnings: list[str] = []
    notifier = _notifier(receiver, warnings, retry_for_s=2.5)  # real sleeps: 1 s, then 2 s would pass the bound
    began = time.monotonic()
    notifier.send("finished", lambda url: {"event": "finished"})
    notifier.wait(30)
    assert time.monotonic() - began < 10
    assert receiver.events() == ["finished"] * 2 and len(warnings) == 1
    assert "HTTP 500 after 2 tries within 2.5 s; given up" in warnings[0]


def test_a_receiver_that_never_answers_is_given_up_on_at_the_try_timeout(receiver):
    receiver.plan = ["hang"] * 10
    warnings: list[str] = []
    notifier = _notifier(receiver, warnings, try_timeout_s=0.5, retry_for_s=1.0)
    began = time.monotonic()
    notifier.send("started", lambda url: {"event": "started"})
    assert time.monotonic() - began < 0.5  # sending never blocks the caller
    notifier.wait(30)
    assert time.monotonic() - began < 10 and len(warnings) == 1
    assert "no answer within 0.5 s" in warnings[0] and "given up" in warnings[0]


def test_wait_gives_up_at_its_limit_and_says_so_once(receiver):
    receiver.plan = ["hang"] * 10
    warnings: list[str] = []
    notifier = _notifier(receiver, warnings, try_timeout_s=60)
    notifier.send("finished", lambda url: {"event": "finished"})
    began = time.monotonic()
    notifier.wait(0.5)
    assert time.monotonic() - began < 3
    assert len(warnings) == 1 and "not delivered within 0.5 s of the job's end" in warnings[0]


def test_a_body_that_cannot_be_made_is_a_warning_never_an_error(receiver):
    warnings: list[str] = []
    notifier = _notifier(receiver, warnings)

    def broken(url):
        raise ValueError(f"cannot read {url}")

    notifier.send("finished", broken)
    notifier.wait(5)
    assert receiver.events() == [] and len(warnings) == 1 and SECRET not in warnings[0]


def test_the_url_is_printed_as_its_host_only():
    assert masked(f"https://hooks.slack.com/services/T0/B0/{SECRET}") == "https://hooks.slack.com/***"
    assert masked(f"http://user:pw@127.0.0.1:8080/x?token={SECRET}") == "http://127.0.0.1:8080/***"


def test_slacks_webhooks_get_slacks_body(tmp_path):
    from runner.reports.notify_body import JobFacts, body_for
    from runner.spec.model import JobSpec

    run = tmp_path / "job-20261203-000000"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"epochs": 3, "train_loss": 0.5, "test_loss": 0.4,
                                                  "test_accuracy": 0.9, "diagnosis": []}))
    (run / "loss_curve.png").write_bytes(b"\x89PNG fake")
    facts = JobFacts(run, JobSpec(name="job", train={"epochs": 3}, resources={"gpu": "A10G:2"}), "modal",
                     time.time() - 1800)  # began half an hour ago
    slack = body_for(f"https://hooks.slack.com/services/T0/B0/{SECRET}", facts, "finished", 0)
    assert slack["text"] == f"gpujob: {run.name} finished" and slack["blocks"][0]["type"] == "section"
    fields = [f["text"] for f in slack["blocks"][1]["fields"]]
    assert "*epochs* 3/3" in fields and "*test_accuracy* 0.9" in fields and "*backend* modal" in fields
    assert any(f.startswith("*cost so far* $") for f in fields)  # A10G:2 at Modal's list price
    plain = body_for("https://example.com/hook", facts, "finished", 0)
    assert plain["loss_curve_png"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    assert plain["cost_so_far_usd"] == pytest.approx(2 * 1.10 / 2, rel=0.01) and "blocks" not in plain


# ---- through the other backends: each passes the webhooks as it passes a secret ---------


def test_docker_hands_the_variable_by_name_so_the_recorded_run_holds_no_url(write_spec, monkeypatch, tmp_path):
    from runner.backends.docker.backend import container_run, docker_run_command
    from runner.spec.load import load_spec

    spec = load_spec(_digits(write_spec))
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    plain = docker_run_command(container_run(spec, tmp_path, False, tmp_path), "r", str(tmp_path), 1, 1)
    assert not any(NOTIFY_ENV in arg for arg in plain)  # the recorded command of a run without webhooks is as it was
    monkeypatch.setenv(NOTIFY_ENV, json.dumps({"urls": [f"https://example.com/{SECRET}"], "backend": "docker"}))
    argv = docker_run_command(container_run(spec, tmp_path, False, tmp_path), "r", str(tmp_path), 1, 1)
    assert argv[argv.index(NOTIFY_ENV) - 1] == "--env" and SECRET not in " ".join(argv)


def test_a_kaggle_bundle_holds_no_webhook(write_spec, tmp_path):
    result = cli("export", "kaggle", _digits(write_spec, notify=[f"https://example.com/{SECRET}"]), tmp_path / "k")
    assert result.exit_code == 0, result.stderr
    _no_secret_in(tmp_path / "k", result.stdout, result.stderr)


@pytest.fixture
def standin_modal(tmp_path, monkeypatch, use_backend):
    pytest.importorskip("modal", reason="the modal extra is not installed (uv sync --extra modal)")
    from runner.backends.modal.app import VOLUME_PATH_ENV
    from runner.backends.modal.service import ModalService
    from tests.modal_standin import ContainerModal

    monkeypatch.setenv(VOLUME_PATH_ENV, str(tmp_path / "volume"))
    service = ContainerModal(tmp_path / "volume", tmp_path / "modal-calls")
    use_backend("modal", connect=lambda: ModalService(service))
    yield service
    service.stop_all()


def test_modal_gives_the_job_its_webhooks_as_a_secret(write_spec, receiver, standin_modal, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      train={"epochs": 1, "max_steps": 6, "log_every_steps": 2},
                      resources={"gpu": "A10G:1", "timeout_minutes": 20}, backend="modal")
    result = cli("submit", spec, "--notify", receiver.url(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert receiver.events() == ["started", "finished"]  # sent from Modal's container, which only the secret told
    finished = receiver.body("finished")
    assert finished["backend"] == "modal" and finished["run"] == result.run_dir.name
    assert finished["cost_so_far_usd"] is not None and finished["cost_so_far_usd"] >= 0
    _no_secret_in(result.run_dir, result.stdout, result.stderr)
    _no_secret_in(tmp_path / "volume")
    _has_tensorboard_events(result.run_dir)  # fetched back with the rest of the folder


def test_vast_gives_the_instance_its_webhooks_in_its_environment_not_in_the_record(write_spec, receiver, use_backend,
                                                                                  tmp_path):
    from tests.test_vast import GOOD, IMAGE
    from tests.vast_standin import LocalVast

    vast = LocalVast(tmp_path / "vast", GOOD)
    use_backend("vast", connect=lambda: vast, poll_s=0.2)
    spec = write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                      train={"epochs": 1, "log_every_steps": 5}, resources={"gpu": "A10G:2", "timeout_minutes": 5},
                      backend="vast", vast={"image": IMAGE})
    try:
        result = cli("submit", spec, "--notify", receiver.url(), "--runs-dir", tmp_path / "runs")
    finally:
        for instance_id, instance in vast.instances.items():
            if not instance["destroyed"]:
                vast.destroy_instance(instance_id)
    assert result.exit_code == 0, result.stderr
    assert receiver.events() == ["started", "finished"] and receiver.body("finished")["backend"] == "vast"
    assert SECRET in vast.envs[0][NOTIFY_ENV]  # what vast.ai was asked to set in the instance
    _no_secret_in(result.run_dir, result.stdout, result.stderr)  # job/request.json holds the payload without it
    _has_tensorboard_events(result.run_dir)  # copied back with the rest of the folder


def test_slurm_jobs_get_the_webhooks_through_sbatchs_environment(write_spec, receiver, tmp_path, slurm_cluster):
    spec = _digits(write_spec, resources={"processes": 2}, train={"epochs": 1, "log_every_steps": 10})
    result = cli("submit", spec, "--backend", "slurm", "--notify", receiver.url(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert receiver.events() == ["started", "finished"]  # rank 0 alone tells, from the SLURM node
    assert receiver.body("finished")["backend"] == "slurm"
    _no_secret_in(result.run_dir, result.stdout, result.stderr)  # job/job.sbatch and slurm-ID.out included
    _has_tensorboard_events(result.run_dir)


def _docker_bridge() -> str | None:
    """The host's address on docker's default bridge, which a container reaches the host by."""
    import subprocess

    out = subprocess.run(["docker", "network", "inspect", "bridge", "--format",
                          "{{range .IPAM.Config}}{{.Gateway}}{{end}}"], capture_output=True, text=True, timeout=30)
    if out.stdout.strip():
        return out.stdout.strip()
    # Some starts of the engine leave the IPAM config without a gateway (seen on a fresh machine
    # with Debian's docker.io 20.10, which skipped this test): the bridge's own address is that gateway.
    name = subprocess.run(["docker", "network", "inspect", "bridge", "--format",
                           '{{index .Options "com.docker.network.bridge.name"}}'],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    addr = subprocess.run(["ip", "-4", "-o", "addr", "show", name or "docker0"], capture_output=True, text=True,
                          timeout=30).stdout.split()
    return addr[addr.index("inet") + 1].split("/")[0] if "inet" in addr else None


def _engine() -> bool:
    from runner.backends.docker.image import engine_available

    return engine_available()


@pytest.mark.skipif(not _engine(), reason="no Docker engine answers here (.ci/start-docker.sh starts one)")
def test_docker_jobs_get_the_webhooks_by_name_from_dockers_environment(write_spec, monkeypatch, tmp_path, image):
    from tests.conftest import cli_subprocess

    bridge = _docker_bridge()
    if bridge is None:
        pytest.skip("docker has no default bridge here")
    monkeypatch.setenv(NOTIFY_ENV, "")
    receiver = Receiver(bridge)  # where the container can reach this machine
    try:
        spec = _digits(write_spec, model={"name": "mlp"}, train={"epochs": 1}, docker={"image": image})
        out = cli_subprocess("submit", spec, "--backend", "docker", "--notify", receiver.url(), "--runs-dir",
                             tmp_path / "runs", timeout=600)
    finally:
        receiver.close()
    assert out.returncode == 0, out.stderr[-3000:]
    assert receiver.events() == ["started", "finished"] and receiver.body("finished")["backend"] == "docker"
    run = Path(out.stdout.strip().splitlines()[-1])
    _no_secret_in(run, out.stdout, out.stderr)  # job/request.json holds `--env GPUJOB_NOTIFY`, by name
    assert f'"{NOTIFY_ENV}"' in (run / "job" / "request.json").read_text()


def test_a_trial_its_sweeps_pruner_stopped_is_told_as_pruned(receiver, monkeypatch, tmp_path):
    from runner.launching.notifying import notifications
    from runner.reports.notify import environment_value
    from runner.spec.model import JobSpec

    monkeypatch.setenv(NOTIFY_ENV, environment_value([receiver.url()], "local"))
    run = tmp_path / "trial-003"
    run.mkdir()
    with notifications(run, JobSpec(name="trial", train={"epochs": 5}), resuming=False):
        # the trial's worker writes summary.json as a pruned trial ends (runner/sweeps/trial.py's PRUNED_BY)
        (run / "summary.json").write_text(json.dumps({"epochs": 2, "train_loss": 0.9, "test_loss": 1.1,
                                                     "test_accuracy": 0.6, "stopped_by": "pruned"}))
    assert receiver.events() == ["started", "pruned"]
    pruned = receiver.body("pruned")
    assert pruned["exit_code"] == 0 and pruned["stopped_by"] == "pruned" and pruned["epochs"] == {"done": 2, "total": 5}


# ---- a Kaggle kernel: the webhook from the kernel's Kaggle secret ---------------------------


def _kaggle_secrets_stub(folder: Path, secrets: dict[str, str]) -> Path:
    """kaggle_secrets as Kaggle's image has it (Kaggle/docker-python patches/kaggle_secrets.py):
    UserSecretsClient().get_secret(LABEL) returns an attached secret's value, and raises
    BackendError for a label this kernel has none of."""
    folder.mkdir()
    (folder / "kaggle_secrets.py").write_text(
        "class BackendError(Exception):\n    pass\n\n\n"
        "class UserSecretsClient:\n"
        "    def get_secret(self, label):\n"
        f"        secrets = {secrets!r}\n"
        "        if label not in secrets:\n"
        "            raise BackendError(f'Unexpected response from the service. Response: {{}}')\n"
        "        return secrets[label]\n")
    return folder


def _run_kernel(kernel: Path, tmp_path: Path, pythonpath: Path | None) -> subprocess.CompletedProcess:
    """The exported script, run here as Kaggle runs it (tests/test_kaggle.py): output redirected,
    nothing installed (this environment has every requirement, as Kaggle's image does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", NOTIFY_ENV)}
    env.update(GPUJOB_KAGGLE_OUTPUT=str(tmp_path / "working"), GPUJOB_KAGGLE_SKIP_INSTALL="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, str(kernel / "run_gpujob.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)


def test_a_kaggle_kernel_tells_the_webhook_of_its_kaggle_secret_and_the_bundle_holds_no_url(write_spec, receiver,
                                                                                            tmp_path):
    url = receiver.url()
    exported = cli("export", "kaggle", _digits(write_spec, notify=[url]), tmp_path / "kernel")
    assert exported.exit_code == 0, exported.stderr
    assert ("notifications: add a Kaggle secret named GPUJOB_NOTIFY with your webhook URL (Add-ons > Secrets) and "
            "attach it to the kernel; the folder holds no URL") in exported.stdout.splitlines()
    _no_secret_in(tmp_path / "kernel", exported.stdout, exported.stderr)
    assert json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())["enable_internet"] is True
    ran = _run_kernel(tmp_path / "kernel", tmp_path, _kaggle_secrets_stub(tmp_path / "stub", {"GPUJOB_NOTIFY": url}))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "gpujob: notifications to the 1 webhook(s) of the Kaggle secret GPUJOB_NOTIFY" in ran.stdout
    assert receiver.events() == ["started", "finished"]
    assert receiver.body("finished")["backend"] == "kaggle" and receiver.body("finished")["epochs"]["done"] == 2
    _no_secret_in(tmp_path / "working", ran.stdout, ran.stderr)


def test_a_kernel_without_the_secret_or_kaggle_secrets_runs_the_job_and_says_there_are_no_notifications(
        write_spec, receiver, tmp_path):
    exported = cli("export", "kaggle", _digits(write_spec, train={"epochs": 1}), tmp_path / "kernel", "--notify")
    assert exported.exit_code == 0, exported.stderr
    assert any(line.startswith("notifications: add a Kaggle secret named GPUJOB_NOTIFY")
               for line in exported.stdout.splitlines())
    ran = _run_kernel(tmp_path / "kernel", tmp_path, None)  # not on Kaggle: no kaggle_secrets module
    assert ran.returncode == 0, ran.stderr[-3000:]
    said = [line for line in ran.stdout.splitlines() if "notifications" in line]
    assert said == ["gpujob: no notifications: no kaggle_secrets module (not a Kaggle kernel) to read the secret "
                    "GPUJOB_NOTIFY from"]
    (tmp_path / "again").mkdir()
    ran = _run_kernel(tmp_path / "kernel", tmp_path / "again", _kaggle_secrets_stub(tmp_path / "stub", {}))  # not attached
    assert ran.returncode == 0, ran.stderr[-3000:]
    said = [line for line in ran.stdout.splitlines() if "notifications" in line]
    assert said == ["gpujob: no notifications: the Kaggle secret GPUJOB_NOTIFY could not be read (BackendError); "
                    "attach it to this kernel under Add-ons > Secrets"]
    assert receiver.events() == []
