"""The modal backend, everything up to the network (Modal's servers are not reachable here).

What would be shipped is checked through gpujob's own request and the dry run: the function's
GPU, timeout, retries and volume, and the call compared with a recorded one. The very function
Modal would run is called with Modal's `.local()` on tiny jobs, with the volume pointed at a
folder, one and two CPU workers. The client's whole flow runs through the real ModalService
against Modal's client objects stood in for by this machine (tests/modal_standin.py): each
attempt in its own process, killed at the function's timeout and retried as Modal does,
cancelled with SIGUSR1, results that expire, Modal's own trouble on any call. Credentials and
network failures are checked through the CLI as a user meets them. tests/remote/ runs a real job.
"""

from __future__ import annotations

import dataclasses
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

from runner.backends.modal.request import modal_request  # noqa: E402
from runner.backends.modal.app import REQUIREMENTS, VOLUME_PATH_ENV, function_for, image_for  # noqa: E402
from runner.backends.modal.service import ModalService, modal_errors  # noqa: E402
from runner.errors import GpujobError  # noqa: E402
from runner.spec.load import load_spec
from tests.conftest import REPO, assert_golden, cli, read_jsonl, read_jsonl_if, wait_for  # noqa: E402
from tests.modal_standin import ContainerModal  # noqa: E402

TIMING_ONLY = {"samples_per_s", "wall_s"}  # wall-clock fields, which differ between any two runs
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


def _curve(run: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_ONLY} for m in read_jsonl(run / "metrics.jsonl")]


def submitted(spec, run_name: str, submission: str = "s-1"):
    """The request for `spec`, as one submission of run `run_name` sends it (each submit and
    resume has its own id; Modal's retries of one submission carry the same)."""
    return dataclasses.replace(modal_request(load_spec(spec), run_name), submission=submission)


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- what would be shipped ------------------------------------------------------------


def test_the_call_takes_gpu_timeout_and_retries_from_the_spec(modal_spec):
    request = modal_request(load_spec(modal_spec(gpu="A10G:2", processes=2)), "run-1")
    assert (request.gpu, request.world_size, request.timeout_s, request.retries) == ("A10G:2", 2, 20 * 60 + 600, 3)
    options = request.options()
    assert options["gpu"] == "A10G:2" and options["timeout"] == 1800
    retries = options["retries"]
    assert (retries.max_retries, retries.backoff_coefficient, retries.initial_delay.total_seconds()) == (3, 1.0, 10.0)
    function_for(request)  # Modal accepts these options for the shipped function
    cpu = modal_request(load_spec(modal_spec(gpu="cpu", processes=3, data={"dataset": "digits", "batch_size": 63})),
                        "run-2")
    assert cpu.gpu is None and cpu.world_size == 3 and "gpu" not in cpu.options()


def test_the_call_sent_is_the_recorded_one(modal_spec):
    """Golden file: a change to what is sent to Modal shows in review."""
    spec = load_spec(modal_spec(gpu="A10G:2", processes=2))
    request = modal_request(spec, "golden-20260101-000000")
    sent = {**dataclasses.asdict(request), "spec_yaml": "<the resolved spec>"}
    assert request.spec_yaml == spec.to_yaml()
    assert_golden("modal_call.txt", request.call() + "\n" + json.dumps(sent, indent=2, sort_keys=True) + "\n")


def test_the_app_ships_the_pinned_requirements_and_gpujobs_own_code():
    from runner.backends.modal import app as modal_app
    from runner.backends.modal.backend import APP, VOLUME, describe_image

    assert (modal_app.APP_NAME, modal_app.VOLUME_NAME) == (APP, VOLUME) == ("gpujob", "gpujob-runs")
    assert modal_app.app.name == "gpujob" and modal_app.VOLUME_MOUNT == "/runs"
    assert modal_app.REQUIREMENTS == REPO / "images" / "requirements.txt" and modal_app.LOCAL_SOURCES == ("runner",)
    assert modal_app.PYTHON_VERSION == "3.11"
    image = describe_image()
    assert "images/requirements.txt" in image and "torch 2." in image and "local source of: runner" in image


def test_no_container_stays_up_billed_once_the_call_has_ended(modal_spec, tmp_path):
    """Modal keeps an idle container up, and bills it, for its scale-down window (60 s unless set):
    each container serves one input and stops, and one left without an input goes after 2 s.
    Read through Modal's public API: the options sent, and the shipped function's FunctionInfo."""
    request = modal_request(load_spec(modal_spec()), "idle-1")
    assert request.options()["scaledown_window"] == 2  # the least Modal accepts
    with_code = dataclasses.replace(request, code_dir=str(tmp_path))
    for function in (function_for(request), function_for(with_code)):
        assert function.info().single_use_containers


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
    assert rows["timeout"] == ("20 min for the job across all attempts; Modal's 1800 s per attempt adds 10 min of "
                               "start-up and save")
    assert rows["retries"].startswith("3")
    assert "gpujob-runs at /runs" in rows["volume"]
    run_name = rows["run folder"].split("/")[-1]
    assert re.fullmatch(r"test-job-\d{8}-\d{6}", run_name)
    assert rows["call"] == ("app 'gpujob': train_remote.with_options(gpu='A10G:2', timeout=1800, retries=3, "
                            f"scaledown_window=2).spawn(<spec yaml>, '{run_name}', <submission id>)")
    from runner.gpus import PRICES_READ_ON

    assert rows["cost"].startswith("$2.20/h for A10G:2") and f"read {PRICES_READ_ON}" in rows["cost"]
    # 20 min of job + 4 attempts x 10 min of start-up and save = 1 h at $2.20/h, not "per attempt"
    assert "at most $2.20 for the whole job as submitted" in rows["cost"] and "per attempt" not in rows["cost"]
    assert "images/requirements.txt" in rows["image"] and "torch 2." in rows["image"] and "runner" in rows["image"]
    assert "credentials" in rows and "dry steps" in rows
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, expected", [
    (["--gpu", "RTX4090:1"], "modal does not offer RTX4090; it offers: T4, L4, A10G, A100-40GB"),
    (["--gpu", "A10G:5", "--set", "data.batch_size=60"], "at most 4 A10G"),
    (["--set", "resources.nodes=2"], "resources.nodes"),
])
def test_what_modal_cannot_run_is_exit_2_before_anything_starts(modal_spec, tmp_path, args, expected):
    result = cli("submit", modal_spec(), *args, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


# ---- the shipped function, run here with .local() -------------------------------------


def test_the_shipped_function_trains_into_the_volume_and_a_rerun_resumes_nothing(modal_spec, volume):
    request = submitted(modal_spec(), "tiny-1")
    assert function_for(request).local(*request.args()) == {"exit_code": 0, "message": ""}
    run = volume / "tiny-1"
    assert all((run / name).is_file() for name in ARTIFACTS)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 6
    before = (run / "summary.json").stat().st_mtime_ns
    # What Modal's restart of a finished input would do: nothing is trained again.
    assert function_for(request).local(*request.args()) == {"exit_code": 0, "message": ""}
    assert (run / "summary.json").stat().st_mtime_ns == before


def test_two_gpus_start_two_ddp_workers_through_the_launcher(modal_spec, volume):
    request = submitted(modal_spec(gpu="A10G:2", processes=2), "ddp-1")
    assert request.world_size == 2
    assert function_for(request).local(*request.args())["exit_code"] == 0
    summary = json.loads((volume / "ddp-1" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["local_batch_size"] == 32
    assert all(e["allreduce_s"] > 0 for e in json.loads((volume / "ddp-1" / "timing.json").read_text())["epochs"])


def test_a_job_error_is_returned_not_raised_so_modal_does_not_retry_it(modal_spec, volume):
    request = submitted(modal_spec(optimizer={"name": "sgd", "lr": 1e12},
                                   train={"epochs": 2, "log_every_steps": 1, "checkpoint_every_minutes": 0}), "nan-1")
    result = function_for(request).local(*request.args())
    assert result["exit_code"] == 1 and "nan" in result["message"].lower()


DRIVER = """
import dataclasses, sys
from runner.backends.modal.app import function_for
from runner.backends.modal.request import modal_request
from runner.spec.load import load_spec  # noqa: E402
request = dataclasses.replace(modal_request(load_spec(sys.argv[1]), sys.argv[2]), submission=sys.argv[3])
print(function_for(request).local(*request.args()), flush=True)
"""


def test_a_preempted_attempt_raises_so_modal_restarts_it_and_the_restart_resumes(modal_spec, volume):
    """The restart ends where a run that was never stopped ends: the same curve, the same weights."""
    spec = modal_spec(train={"epochs": 30, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(spec), "long-1", "s-1"], cwd=REPO, env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or len(read_jsonl_if(volume / "long-1" / "metrics.jsonl")) >= 3,
                 "the first attempt's steps")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)  # how Modal tells a container it is being preempted
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "Modal starts it again" in stderr, stderr[-2000:]
    assert list((volume / "long-1" / "checkpoints").glob("step-*.pt"))
    assert not (volume / "long-1" / "summary.json").exists()

    request = submitted(spec, "long-1", "s-1")
    assert function_for(request).local(*request.args())["exit_code"] == 0  # Modal's restart, of the same submission
    assert json.loads((volume / "long-1" / "summary.json").read_text())["resumed"] == 1
    never_stopped = submitted(spec, "long-2")
    assert function_for(never_stopped).local(*never_stopped.args())["exit_code"] == 0
    assert _curve(volume / "long-1") == _curve(volume / "long-2")  # every step once, the same losses
    assert _same_weights(volume / "long-1", volume / "long-2")


# ---- the client's flow, against Modal's servers stood in for by this machine ---------


@pytest.fixture
def container_modal(volume, tmp_path, use_backend):
    def use(**options) -> ContainerModal:
        service = ContainerModal(volume, tmp_path / "modal-calls", **options)
        use_backend("modal", connect=lambda: ModalService(service))
        made.append(service)
        return service

    made: list[ContainerModal] = []
    yield use
    for service in made:  # no container outlives its test
        service.stop_all()


def test_submit_brings_the_run_folder_back_into_runs(modal_spec, container_modal, tmp_path):
    container_modal()
    result = cli("submit", modal_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run) and run.name.startswith("test-job-")  # the last line
    assert all((run / name).is_file() for name in ARTIFACTS)
    assert list((run / "checkpoints").glob("step-*.pt"))
    assert "done: test_accuracy" in result.stdout and "training on cpu" in result.stdout  # its logs, streamed
    record = json.loads((run / "submission.json").read_text())
    assert record["backend"] == "modal" and record["handles"]["modal_call_id"] == "fc-test-1"
    assert record["handles"]["modal_volume"] == "gpujob-runs" and record["asks"]["gpu"] == "A10G:1"
    assert not any("token" in key for key in record["handles"])
    assert read_jsonl(run / "metrics.jsonl") == read_jsonl(tmp_path / "volume" / run.name / "metrics.jsonl")
    cost, summary = (json.loads((run / name).read_text()) for name in ("cost.json", "summary.json"))
    # Billed from the spawn to the end, as the budget's meter counts (the container's start-up
    # included), plus Modal's 2 s scale-down window: more than the job's own wall time.
    assert cost["price_per_hour_usd"] == 1.10 and cost["billed_s"] > summary["wall_s"] + 2
    assert cost["billed_s"] == pytest.approx(summary["usd"] * 3600 / 1.10 + 2, abs=0.1)
    assert cost["estimated_usd"] == pytest.approx(1.10 * cost["billed_s"] / 3600, abs=1e-4)
    assert "from each submission's spawn to its end" in cost["basis"]
    # The estimate said before anything was rented, once Modal had answered; kept to hold the bill against.
    said = result.stderr.splitlines()
    estimate = next(i for i, line in enumerate(said) if line.startswith("gpujob: estimate before the run: "))
    assert estimate < next(i for i, line in enumerate(said) if line.startswith("modal: started "))
    assert "of training on A10G:1, about $" in said[estimate]
    assert record["estimate"]["gpu"] == "A10G:1" and record["estimate"]["usd_per_hour"] == 1.10
    assert cost["estimated_before_run"]["total_s"] == record["estimate"]["total_s"]
    # Where the start-up went, as far as each side saw it: Modal's set-up here, then the job's own phases.
    shown = cli("show", run).stdout
    assert "Modal app, image and call set up " in shown and "first step " in shown


def test_the_users_own_code_goes_in_the_image_and_the_job_runs_with_it(container_modal, tmp_path):
    """The regression example (its own model, data and step): the function's image adds the run's
    copy of the code at CODE_MOUNT, and the container, which has nothing of this machine's
    Python paths, imports it from there (tests/modal_standin.py puts the image's files in place)."""
    from runner.backends.modal.app import CODE_MOUNT
    from runner.backends.modal.request import ModalRequest
    from tests.modal_standin import image_files
    from tests.test_user_code import example

    service = container_modal()
    spec = example(tmp_path, "regression", train={"epochs": 2}, resources={"gpu": "A10G:1"})
    result = cli("submit", spec, "--backend", "modal", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    request = ModalRequest(**json.loads((run / "job" / "request.json").read_text()))
    assert request.code_dir == str(run / "job" / "code")
    shipped = sorted(remote for _, remote in image_files(image_for(request)) if remote.startswith(CODE_MOUNT))
    package = spec.parent / "gpujob_examples"
    assert shipped == sorted(f"{CODE_MOUNT}/gpujob_examples/{p.name}" for p in package.iterdir() if p.suffix == ".py")
    assert (run / "job" / "code" / "gpujob_examples" / "regression.py").read_text() == \
        (package / "regression.py").read_text()  # the copy the image names is the code as submitted
    (call,) = service.calls.values()
    assert "GPUJOB_CODE_PATHS" not in call._container_env() and "PYTHONPATH" not in call._container_env()
    last = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert set(last["test_metrics"]) == {"mae"} and last["test_accuracy"] is None


def test_detach_status_logs_cancel_resume_and_runs(modal_spec, container_modal, tmp_path):
    service = container_modal()
    runs = tmp_path / "runs"
    spec = modal_spec(train={"epochs": 400, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    submitted = cli("submit", spec, "--detach", "--runs-dir", runs)
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    assert "submitted" in submitted.stdout and f"gpujob cancel {run}" in submitted.stdout
    assert sorted(p.name for p in run.iterdir()) == ["job", "submission.json"]

    wait_for(lambda: len(read_jsonl_if(tmp_path / "volume" / run.name / "metrics.jsonl")) >= 3, "the job's steps")
    assert cli("status", run.name, "--runs-dir", runs).stdout.strip() == f"{run.name}: running: on Modal (call fc-test-1)"
    shown = cli("logs", run)
    assert shown.exit_code == 0 and "training on cpu" in shown.stdout and "step 5/" in shown.stdout
    early = cli("fetch", run)
    assert early.exit_code == 2 and "still running" in early.stderr
    assert cli("resume", run).exit_code == 2  # a live run is never started twice

    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert service.cancels == ["fc-test-1"]  # FunctionCall.cancel, which Modal delivers as SIGUSR1
    status = cli("status", run).stdout
    assert status.startswith(f"{run.name}: cancelled") and "gpujob resume" in status
    remote = tmp_path / "volume" / run.name
    assert list((remote / "checkpoints").glob("step-*.pt")) and not (remote / "summary.json").exists()
    assert cli("runs", "--runs-dir", runs).stdout.splitlines()[1].split()[:3] == [run.name, "modal", "cancelled"]

    fetched = cli("fetch", run)
    assert fetched.exit_code == 0 and list((run / "checkpoints").glob("step-*.pt"))
    steps_before = len(read_jsonl(run / "metrics.jsonl"))

    # The same call again, under the same name: it continues from the volume's checkpoint.
    resumed = cli("resume", run, "--detach")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads((run / "submission.json").read_text())["handles"]["modal_call_id"] == "fc-test-2"
    wait_for(lambda: len(read_jsonl_if(remote / "metrics.jsonl")) > steps_before, "the resumed job's steps")
    assert cli("status", run).stdout.strip() == f"{run.name}: running: on Modal (call fc-test-2)"
    assert cli("cancel", run).exit_code == 0
    record = json.loads((run / "submission.json").read_text())
    assert [e["event"] for e in record["events"]] == ["submitted", "spawned", "cancel asked", "resumed", "spawned",
                                                      "cancel asked"]
    assert cli("fetch", run).exit_code == 0
    assert len(read_jsonl(run / "metrics.jsonl")) > steps_before  # fetch brings the resumed call's steps


def test_a_cancelled_job_resumes_to_the_end_with_every_step_once(modal_spec, container_modal, tmp_path):
    service = container_modal()
    runs = tmp_path / "runs"
    spec = modal_spec(train={"epochs": 3, "max_steps": 60, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    run = cli("submit", spec, "--detach", "--runs-dir", runs).run_dir
    wait_for(lambda: len(read_jsonl_if(tmp_path / "volume" / run.name / "metrics.jsonl")) >= 2, "the job's steps")
    assert cli("cancel", run).exit_code == 0
    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.run_dir == run and (run / "summary.json").exists()
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # every step logged once, to the end
    assert json.loads((run / "summary.json").read_text())["resumed"] == 1
    assert cli("status", run).stdout.startswith(f"{run.name}: finished")
    assert cli("runs", "--runs-dir", runs, "--json").stdout.count('"finished"') == 1
    assert service.cancels == ["fc-test-1"]


def test_a_failed_remote_job_comes_back_with_its_error_and_folder(modal_spec, container_modal, tmp_path):
    container_modal()
    spec = modal_spec(optimizer={"name": "sgd", "lr": 1e12},
                      train={"epochs": 2, "log_every_steps": 1, "checkpoint_every_minutes": 0})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert "nan" in result.stderr.lower() and "run folder: " in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run)  # the last line is the run folder, on failure too
    assert (run / "metrics.jsonl").exists() and not (run / "summary.json").exists()
    assert cli("status", run).stdout.startswith(f"{run.name}: failed")


def test_ctrl_c_cancels_the_remote_call_which_checkpoints(modal_spec, container_modal, tmp_path):
    service = container_modal(interrupt_after=6)  # a real SIGINT to this process while it follows the call
    spec = modal_spec(train={"epochs": 400, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 130
    assert "the remote job was stopped" in result.stderr and "gpujob fetch" in result.stderr
    assert service.cancels == ["fc-test-1"]  # ModalService's own FunctionCall.cancel(), which Modal sends as SIGUSR1
    assert service.app_runs == [True]  # the app runs detached from the client, even attached
    (call,) = service.calls.values()
    assert call.attempts == [("returned", call.attempts[0][1])]  # it checkpointed and returned: not retried
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run)
    assert list((tmp_path / "volume" / run.name / "checkpoints").glob("step-*.pt"))  # SIGUSR1 became a checkpoint


# ---- what Modal does to a call, and what the user sees ------------------------------------

LONG = {"epochs": 20_000, "log_every_steps": 5, "checkpoint_every_minutes": 10}  # never done: stopped first


def test_resources_timeout_minutes_stops_the_job_with_a_checkpoint_and_exit_1(modal_spec, container_modal, tmp_path):
    """Half a minute: on a loaded 2-core machine the container's start (Python, torch, the data)
    alone has taken more than 6 s, and a job stopped before its first step keeps nothing."""
    service = container_modal()
    spec = modal_spec(resources={"gpu": "A10G:1", "timeout_minutes": 0.5}, train=LONG)
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    run = result.run_dir
    assert result.stdout.splitlines()[-1] == str(run) and run.parent == tmp_path / "runs"
    assert "ran past resources.timeout_minutes (0.5 min)" in result.stderr and "nothing was kept" not in result.stderr
    assert f"gpujob resume {run}" in result.stderr  # the folder here, not the volume's path in the container
    assert json.loads((run / "job" / "request.json").read_text())["timeout_s"] == 30 + 600  # Modal's, with grace
    (call,) = service.calls.values()
    assert [how for how, _ in call.attempts] == ["returned"]  # the job's own outcome: Modal does not retry it
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "summary.json").exists()
    assert cli("status", run).stdout.startswith(f"{run.name}: failed")


def test_a_call_past_its_modal_timeout_is_ended_by_modal_and_is_exit_1(modal_spec, container_modal, tmp_path):
    """A job that outlives timeout_minutes + 10 min in every attempt (hung, say): Modal ends each
    attempt at the function's timeout, retries it, and then call.get raises FunctionTimeoutError."""
    second = 0.0015  # Modal's 1800 s per attempt last 2.7 s here; the job's own 20 min never run out
    service = container_modal(modal_second=second)
    result = cli("submit", modal_spec(train=LONG), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    assert "it ran past its Modal timeout (Function timed out after 1800 s)" in result.stderr
    (call,) = service.calls.values()
    assert [how for how, _ in call.attempts] == ["timed out"] * 4  # the first attempt and Modal's 3 retries
    assert all(1800 * second <= seconds < 1800 * second + 5 for _, seconds in call.attempts)
    run = result.run_dir
    assert result.stdout.splitlines()[-1] == str(run) and run.parent == tmp_path / "runs"
    status = cli("status", run).stdout
    assert status.startswith(f"{run.name}: failed") and "Modal timeout" in status


def test_an_expired_result_is_read_from_the_folder(modal_spec, container_modal, tmp_path):
    service = container_modal()
    run = cli("submit", modal_spec(), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    service.wait_all()
    service.expired = True  # Modal keeps a call's result for a while, then get() raises OutputExpiredError
    status = cli("status", run)
    assert status.exit_code == 0 and "Modal no longer keeps its result" in status.stdout, status.stderr
    assert "gpujob fetch" in status.stdout
    fetched = cli("fetch", run)
    assert fetched.exit_code == 0 and fetched.stdout.splitlines()[-1] == str(run), fetched.stderr
    assert all((run / name).is_file() for name in ARTIFACTS)
    assert cli("status", run).stdout.startswith(f"{run.name}: finished")  # the folder tells


def test_a_cancel_before_the_job_trains_is_cancelled_never_failed(modal_spec, container_modal, tmp_path):
    """Cancelled while its container starts, the input ends without returning: Modal records a
    TERMINATED result, which call.get raises as a RemoteError."""
    service = container_modal()
    run = cli("submit", modal_spec(train=LONG), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    (call,) = service.calls.values()
    assert [how for how, _ in call.attempts] in (["cancelled"], ["returned"])  # before or after train_remote began
    status = cli("status", run).stdout
    assert status.startswith(f"{run.name}: cancelled") and "RemoteError" not in status and "gpujob resume" in status


def test_a_call_stopped_outside_gpujob_is_preempted_and_resumable(modal_spec, container_modal, tmp_path):
    service = container_modal()
    run = cli("submit", modal_spec(train=LONG), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    wait_for(lambda: len(read_jsonl_if(tmp_path / "volume" / run.name / "metrics.jsonl")) >= 2, "the job's steps")
    service.call("fc-test-1").cancel(terminate_containers=True)  # from Modal's dashboard: the container ends
    service.wait_all()
    status = cli("status", run)
    assert status.exit_code == 0 and status.stdout.startswith(f"{run.name}: preempted"), status.stdout
    assert "the call was cancelled" in status.stdout and f"gpujob resume {run}" in status.stdout
    assert cli("resume", run, "--detach").exit_code == 0  # resumable, as a stopped run is
    assert cli("cancel", run).exit_code == 0


def test_modals_own_trouble_in_status_logs_cancel_fetch_is_exit_3_naming_the_call(modal_spec, container_modal,
                                                                                  tmp_path):
    import modal.exception as errors

    service = container_modal()
    run = cli("submit", modal_spec(), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    service.wait_all()
    for command, kind, error in [("status", "get", errors.InternalError("internal")),
                                 ("logs", "logs", errors.ServiceError("unavailable")),
                                 ("cancel", "get", errors.ResourceExhaustedError("rate limited")),
                                 ("fetch", "get", errors.InternalError("internal")),
                                 ("fetch", "volume", errors.ServiceError("unavailable"))]:
        service.fail_next(kind, error)
        out = cli(command, run)
        assert out.exit_code == 3, (command, kind, out.stdout, out.stderr)
        assert "Modal had trouble" in out.stderr and "the job itself is not affected (call fc-test-1)" in out.stderr, \
            (command, kind, out.stderr)
        assert "failed" not in out.stdout + out.stderr and "did not finish" not in out.stdout + out.stderr
    assert not (run / "summary.json").exists()
    fetched = cli("fetch", run)  # Modal answers again: nothing was lost
    assert fetched.exit_code == 0 and (run / "summary.json").exists()
    assert cli("status", run).stdout.startswith(f"{run.name}: finished")


def test_a_long_outage_while_following_ends_naming_the_call_that_runs_on(modal_spec, container_modal, tmp_path,
                                                                         monkeypatch):
    """Modal's own trouble outlasting what an attached submit waits out: the client lets go, never
    the job, and its last line names this submission's call (on a resume too, not the one before)
    and how to follow it again. A dropped connection is the same, though Modal's App.run()
    swallows a ConnectionError raised inside a detached app's block."""
    import modal.exception as errors

    from runner.backends.modal import service as service_module

    monkeypatch.setattr(service_module, "FOLLOW_OUTAGE_S", 3.0)  # 10 min for a user
    service = container_modal()
    service.fail_next("get", *[errors.InternalError("internal")] * 100)
    result = cli("submit", modal_spec(train=LONG), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 3, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    last = result.stderr.strip().splitlines()[-1]
    assert "InternalError" in last and "the job is still running on Modal (call fc-test-1)" in last, last
    assert f"gpujob logs {run} --follow" in last and f"gpujob status {run}" in last and "try again" not in last
    service.failures["get"].clear()  # Modal answers again: the job ran on all along
    assert service.cancels == [] and cli("status", run).stdout.startswith(f"{run.name}: running")
    assert cli("cancel", run).exit_code == 0

    spawn = service._spawn

    def spawn_then_drop_the_connection(*args):  # the resume's own status check still reaches Modal
        call = spawn(*args)
        service.fail_next("get", *[errors.ConnectionError("Deadline exceeded")] * 100)
        return call

    monkeypatch.setattr(service, "_spawn", spawn_then_drop_the_connection)
    resumed = cli("resume", run)
    assert resumed.exit_code == 3, resumed.stderr
    last = resumed.stderr.strip().splitlines()[-1]
    assert "the job is still running on Modal (call fc-test-2)" in last and "fc-test-1" not in last, last
    assert f"gpujob logs {run} --follow" in last
    service.failures["get"].clear()
    assert cli("status", run).stdout.strip() == f"{run.name}: running: on Modal (call fc-test-2)"
    assert cli("cancel", run).exit_code == 0


def test_a_call_the_run_folder_cannot_record_is_cancelled_not_left_billing(modal_spec, container_modal, tmp_path,
                                                                           monkeypatch):
    """The call is spawned, then writing its id into the run record fails (a full disk): nothing
    could follow, fetch or cancel it later, so it is cancelled and the line says so, naming it."""
    import errno

    from runner.runs import record as run_record

    service = container_modal()
    written = run_record.update
    full = []

    def update(folder, **changes):
        if "handles" in changes and not full:  # the call's id, the record's first write after the spawn
            full.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return written(folder, **changes)

    monkeypatch.setattr(run_record, "update", update)
    result = cli("submit", modal_spec(train=LONG), "--detach", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 3, (result.stderr, result.exception)
    line = result.stderr.strip().splitlines()[-1]
    assert "fc-test-1" in line and "No space left on device" in line and "cancelled" in line, line
    assert service.cancels == ["fc-test-1"]
    assert service.call("fc-test-1").ended.wait(60)  # nothing runs on, billed, that no folder names


def test_a_resume_gets_its_own_time_limit_however_long_ago_the_first_submit_was(modal_spec, container_modal,
                                                                                 tmp_path):
    """resources.timeout_minutes holds per submission, as on every other backend: a run cancelled
    (or timed out) a day ago trains again when resumed, though its first attempt began long before."""
    from runner.backends.modal.app import FIRST_ATTEMPT

    container_modal()
    spec = modal_spec(train={"epochs": 3, "max_steps": 60, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    run = cli("submit", spec, "--detach", "--runs-dir", tmp_path / "runs").run_dir
    remote = tmp_path / "volume" / run.name
    wait_for(lambda: len(read_jsonl_if(remote / "metrics.jsonl")) >= 2, "the job's steps")
    assert cli("cancel", run).exit_code == 0
    _a_day_earlier(remote / "job" / FIRST_ATTEMPT)
    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert "across its attempts" not in resumed.stderr
    assert json.loads((run / "summary.json").read_text())["resumed"] == 1
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert steps[-1] == 60


def _a_day_earlier(mark: Path) -> None:
    """Move the time a submission's first attempt began a day back."""
    kept = json.loads(mark.read_text())
    mark.write_text(json.dumps({**kept, "at": kept["at"] - 24 * 3600}) + "\n")


def test_a_call_modal_failed_inside_its_infrastructure_is_the_jobs_failure(modal_spec, container_modal, tmp_path,
                                                                           monkeypatch):
    """An input whose containers Modal keeps losing ends, after Modal's own reruns, with an
    INTERNAL_FAILURE result, which FunctionCall.get raises as InternalFailure on every poll: the
    job's outcome, said at once, not Modal's passing trouble waited out and called harmless."""
    from runner.backends.modal import service as service_module

    monkeypatch.setattr(service_module, "FOLLOW_OUTAGE_S", 3.0)  # what was waited out: 10 min for a user
    service = container_modal(lost_containers=8)
    result = cli("submit", modal_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    said = result.stderr + result.stdout
    assert "InternalFailure" in result.stderr and "Modal's infrastructure" in result.stderr, result.stderr
    assert "not affected" not in said and "try again" not in said and "the job runs on" not in said
    (call,) = service.calls.values()
    assert [how for how, _ in call.attempts] == ["lost"] * 8  # Modal's own reruns, none of the function's retries
    status = cli("status", run)
    assert status.exit_code == 0 and status.stdout.startswith(f"{run.name}: failed"), status.stdout
    assert "InternalFailure" in status.stdout


def test_status_of_a_folder_that_is_not_a_run_is_exit_2(tmp_path):
    (tmp_path / "plain").mkdir()
    result = cli("status", tmp_path / "plain")
    assert result.exit_code == 2 and "submission.json" in result.stderr
    assert cli("fetch", "nowhere", "--runs-dir", tmp_path).exit_code == 2


# ---- credentials, the package, the network --------------------------------------------


def _gpujob(*args, home: Path, **env) -> subprocess.CompletedProcess:
    """`gpujob ARGS` in a fresh process whose only Modal settings are HOME (for ~/.modal.toml) and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**clean, "HOME": str(home), **env})


def _gpujob_timed(*args, home: Path, **env) -> tuple[subprocess.CompletedProcess, float]:
    """_gpujob, and the seconds from its first line ("modal: connecting to Modal ...", printed once it
    starts to try) to its exit: what the user waits for an answer, whatever Python's and torch's
    imports took before on a loaded machine."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**clean, "HOME": str(home), **env})
    said_at, stderr = [], []

    def read():
        for line in proc.stderr:
            said_at.append(time.monotonic())
            stderr.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"gpujob {' '.join(map(str, args))} still runs after 180 s: {''.join(stderr)}")
    ended = time.monotonic()
    reader.join(timeout=10)
    assert said_at, f"gpujob said nothing on stderr; stdout: {proc.stdout.read()}"
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read(), "".join(stderr))
    return out, ended - said_at[0]


def test_without_credentials_submit_is_exit_3_with_one_line(modal_spec, tmp_path):
    (tmp_path / "home").mkdir()
    out = _gpujob("submit", modal_spec(), "--backend", "modal", "--runs-dir", tmp_path / "runs", home=tmp_path / "home")
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == [
        "gpujob: modal: no credentials; run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"]
    assert not (tmp_path / "runs").exists()


def test_without_the_modal_package_submit_is_exit_3_saying_how_to_install_it(modal_spec, tmp_path):
    code = ("import sys; sys.modules['modal'] = None; from runner.cli.main import app; "
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
    out, waited = _gpujob_timed("submit", modal_spec(), "--runs-dir", tmp_path / "runs", home=home,
                                MODAL_SERVER_URL=dropping_server)
    assert out.returncode == 3, out.stderr
    said, line = out.stderr.strip().splitlines()  # what it tries, at once; then why it stopped
    assert said == "modal: connecting to Modal ..."
    assert line.startswith("gpujob: modal: ") and "check your network" in line
    assert waited < 15 + 10  # at most 15 s of trying, and the exit
    assert "ak-not-a-real-id" not in out.stdout + out.stderr and "as-not-a-real-secret" not in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists()

    dry = _gpujob("submit", modal_spec(), "--dry-run", home=home, MODAL_SERVER_URL=dropping_server)
    assert dry.returncode == 0 and f"from {home / '.modal.toml'}" in dry.stdout  # found, never shown
    assert "not-a-real" not in dry.stdout + dry.stderr


def test_a_server_that_never_answers_is_given_up_on_within_15_s(modal_spec, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts connections, never says a word
    home = tmp_path / "home"
    home.mkdir()
    (home / ".modal.toml").write_text('[default]\ntoken_id = "ak-x"\ntoken_secret = "as-x"\n')
    try:
        out, waited = _gpujob_timed("submit", modal_spec(), "--runs-dir", tmp_path / "runs", home=home,
                                    MODAL_SERVER_URL=f"http://127.0.0.1:{silent.getsockname()[1]}")
    finally:
        silent.close()
    assert out.returncode == 3 and "did not answer within 15 s" in out.stderr, out.stderr
    assert out.stderr.startswith("modal: connecting to Modal ...")
    assert 15 <= waited < 15 + 10, waited  # given up on at 15 s, not before and not minutes later
    assert not (tmp_path / "runs").exists()


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


# ---- ModalService's own logic, against a Modal that misbehaves as the real one can ------------


class FakeCall:
    """A FunctionCall whose get() follows a script: exceptions to raise, then the result; its
    cancel() raises `cancel_error` where Modal refuses it."""

    def __init__(self, script, result, cancel_error=None):
        self.script, self.result, self.cancels, self.cancel_error = list(script), result, [], cancel_error
        self.object_id = "fc-fake"

    def get(self, timeout=None):
        if self.script:
            raise self.script.pop(0)
        return self.result

    def cancel(self, terminate_containers=False):
        if self.cancel_error is not None:
            raise self.cancel_error
        self.cancels.append(terminate_containers)
        self.result = None
        self.script = [modal_exception().InputCancellation("cancelled")]


def modal_exception():
    import modal.exception

    return modal.exception


class FakeRequest:
    def __init__(self, call, on_spawn=None):
        self.call, self.on_spawn = call, on_spawn

    def args(self):
        return "name: x\n", "run-1", "s-1"

    def function(self):
        request = self

        class Function:
            def spawn(self, spec_yaml, run_name, submission):
                if request.on_spawn:
                    request.on_spawn()
                return request.call

        return Function()


class ScriptedModal:
    """A ModalClient whose calls are FakeCalls: the app run as Modal's runner behaves (it swallows
    a KeyboardInterrupt raised inside its block, modal/runner.py), no output, no network."""

    def __init__(self):
        self.runs, self.calls = [], {}

    def output(self):
        from contextlib import nullcontext

        return nullcontext()

    def running(self, request, detach: bool):
        from contextlib import contextmanager

        @contextmanager
        def run():
            self.runs.append(detach)
            try:
                yield
            except KeyboardInterrupt:
                return  # what modal/runner.py does: "Disconnecting from Modal ..."

        return run()

    def spawn(self, request):  # a FakeRequest: its function is scripted
        return request.function().spawn(*request.args())

    def call(self, call_id: str):
        return self.calls[call_id]

    def volume(self):
        raise AssertionError("these tests read no volume")


@pytest.fixture
def service(monkeypatch):
    """The real ModalService on a ScriptedModal, its waits between polls skipped."""
    from runner.backends.modal import service as service_module

    monkeypatch.setattr(service_module.time, "sleep", lambda s: None)
    client = ScriptedModal()
    made = ModalService(client)
    made.runs = client.runs
    return made


def test_modals_own_trouble_while_following_is_waited_out_never_stopping_the_job(service, capsys):
    errors = modal_exception()
    call = FakeCall([errors.InternalError("internal"), errors.ServiceError("unavailable"), TimeoutError()],
                    {"exit_code": 0, "message": ""})
    state = service.start(FakeRequest(call), "run-1", detach=False, spawned=lambda call_id: None)
    assert state.state == "finished" and service.runs == [True]  # the app outlives the client: never stopped
    assert capsys.readouterr().err.count("the job runs on") == 2 and call.cancels == []


def test_ctrl_c_during_the_spawn_leaves_a_tracked_job_or_none(service):
    import signal as signals

    for detach in (False, True):
        call = FakeCall([TimeoutError()] * 5, {"exit_code": 0, "message": ""})
        recorded = []
        request = FakeRequest(call, on_spawn=lambda: os.kill(os.getpid(), signals.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            service.start(request, "run-1", detach=detach, spawned=recorded.append)
        assert recorded == ["fc-fake"]  # the handle is kept before the interrupt is acted on
        assert call.cancels == ([] if detach else [False])  # attached: cancelled, letting it checkpoint


def test_a_call_the_record_cannot_take_is_cancelled_or_named_with_how_to_cancel_it(service):
    """Attached or detached alike: a call no run folder names would bill unseen to its time limit."""
    import errno

    def full_disk(call_id):
        raise OSError(errno.ENOSPC, "No space left on device")

    for detach in (False, True):
        call = FakeCall([TimeoutError()] * 5, {"exit_code": 0, "message": ""})
        with pytest.raises(GpujobError) as err:
            service.start(FakeRequest(call), "run-1", detach=detach, spawned=full_disk)
        assert call.cancels == [True] and err.value.exit_code == 3
        assert "call fc-fake" in err.value.message and "No space left on device" in err.value.message
        assert "was cancelled" in err.value.message
    refused = FakeCall([TimeoutError()] * 5, {"exit_code": 0, "message": ""},
                       cancel_error=modal_exception().ServiceError("unavailable"))
    with pytest.raises(GpujobError) as err:
        service.start(FakeRequest(refused), "run-1", detach=True, spawned=full_disk)
    assert "may be running, billed" in err.value.message and "ServiceError: unavailable" in err.value.message
    assert "modal.FunctionCall.from_id('fc-fake').cancel()" in err.value.message


def test_a_modal_side_error_is_not_taken_for_the_job_failing(service):
    call = FakeCall([modal_exception().ResourceExhaustedError("rate limited")], None)
    service.client.calls["fc-fake"] = call
    with pytest.raises(GpujobError) as err, modal_errors("asking Modal about the job", "fc-fake"):
        service.poll("fc-fake")
    assert err.value.exit_code == 3 and "the job itself is not affected (call fc-fake)" in err.value.message


def test_the_time_limit_holds_across_modals_retries_of_one_submission(modal_spec, volume):
    """Modal starts its timeout again with each retry; resources.timeout_minutes is the
    submission's, shared by all its attempts. Another submission (a resume) has its own."""
    from runner.backends.modal.app import FIRST_ATTEMPT

    spec = modal_spec(resources={"timeout_minutes": 1, "gpu": "A10G:1"})
    request = submitted(spec, "late-1", "s-1")
    (volume / "late-1" / "job").mkdir(parents=True)
    (volume / "late-1" / "job" / FIRST_ATTEMPT).write_text(
        json.dumps({"submission": "s-1", "at": time.time() - 90}))  # its first attempt began 90 s ago
    result = function_for(request).local(*request.args())  # a retry of that submission
    assert result["exit_code"] == 1 and "across its attempts" in result["message"]
    assert not (volume / "late-1" / "metrics.jsonl").exists()  # nothing trained past the limit
    resumed = submitted(spec, "late-1", "s-2")
    assert function_for(resumed).local(*resumed.args()) == {"exit_code": 0, "message": ""}
    assert (volume / "late-1" / "summary.json").exists()


# ---- past Modal's 24 hours: a chain of calls ---------------------------------------------------

CHAINED_CALL_LIMIT_S = 30  # Modal's 24 h per call, here: each call trains for 20 s at most (chain.py)


@pytest.fixture
def short_calls(monkeypatch):
    """Modal's per-call limit lowered to CHAINED_CALL_LIMIT_S, here and in the stand-in's containers."""
    from runner.backends.modal.request import CALL_LIMIT_ENV

    monkeypatch.setenv(CALL_LIMIT_ENV, str(CHAINED_CALL_LIMIT_S))


def _chained_spec(modal_spec, max_steps: int):
    """A small CNN (about 10 steps a second here: a few hundred logged losses in a chain)."""
    return modal_spec(model={"name": "cnn"}, data={"dataset": "synthetic", "batch_size": 64},
                      train={"epochs": 10_000, "max_steps": max_steps, "log_every_steps": 5,
                             "checkpoint_every_minutes": 10},
                      resources={"gpu": "A10G:1", "timeout_minutes": 60})


def _steps_per_second(modal_spec, volume) -> float:
    """How fast this machine trains the chained job's model now (it is shared, and loaded).
    Measured in one call without the lowered per-call limit: under CI's load these 60 steps
    once took past the 20 s a short call trains, and the call then handed over to a successor,
    which `.local()` has no Modal client to spawn."""
    from runner.backends.modal.request import CALL_LIMIT_ENV

    request = submitted(_chained_spec(modal_spec, 60), "pace-1")
    with pytest.MonkeyPatch.context() as one_call:
        one_call.delenv(CALL_LIMIT_ENV, raising=False)
        assert function_for(request).local(*request.args())["exit_code"] == 0
    return 60 / json.loads((volume / "pace-1" / "timing.json").read_text())["train_loop_s"]


def test_a_job_past_the_per_call_limit_runs_as_a_chain_with_the_losses_of_one_long_call(
        modal_spec, container_modal, tmp_path, short_calls, volume):
    """Each call stops itself with a checkpoint before Modal's limit and spawns the next from its
    container, which resumes from the volume; the attached terminal follows the chain to its
    last call. Enough steps for 55 s of training: at most 20 s in each call, so 3 calls or more,
    with room for a pace that was measured while this shared machine was busier than now."""
    steps = int(55 * _steps_per_second(modal_spec, volume))
    assert steps < 2000, steps  # a CNN: a curve of hundreds of losses, not tens of thousands
    spec = _chained_spec(modal_spec, steps)
    plan = cli("submit", spec, "--dry-run")
    assert "runs as a chain of calls of 30 s each" in plan.stdout, plan.stdout
    service = container_modal()
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    calls = list(service.calls)
    assert len(calls) >= 3 and service.spawned_inside == calls[1:], (calls, service.spawned_inside)
    assert all(call.attempts == [("returned", call.attempts[0][1])] for call in service.calls.values())
    record = json.loads((run / "submission.json").read_text())
    assert record["handles"]["modal_calls"] == calls and record["handles"]["modal_call_id"] == calls[-1]
    assert [e["call"] for e in record["events"] if e["event"] == "continued"] == calls[1:]
    assert f"the job continues in call {calls[1]}" in result.stderr

    never_stopped = submitted(_chained_spec(modal_spec, steps), "long-1")
    os.environ.pop("GPUJOB_MODAL_CALL_LIMIT_S")  # one call, never handed over
    assert function_for(never_stopped).local(*never_stopped.args())["exit_code"] == 0
    assert _curve(run) == _curve(volume / "long-1")  # every step once, the same losses
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == len(calls) - 1, (summary.get("interruptions"), summary.get("attempts"),
                                                  read_jsonl(run / "modal_calls.jsonl"))

    cost = json.loads((run / "cost.json").read_text())
    assert [c["call_id"] for c in cost["calls"]] == calls
    assert cost["billed_s"] == pytest.approx(sum(c["billed_s"] for c in cost["calls"]), abs=0.2)
    assert all(0 < c["billed_s"] <= CHAINED_CALL_LIMIT_S for c in cost["calls"])
    assert cost["estimated_usd"] == pytest.approx(1.10 * cost["billed_s"] / 3600, abs=1e-4)
    assert f"{len(calls)} calls" in cost["basis"]


def test_a_job_with_its_own_code_goes_on_in_the_chains_next_calls(container_modal, tmp_path, short_calls):
    """The chain's next call is spawned from the container with gpujob's own image, which lacks the
    job's code (a function made per job cannot be called from another container): the first call
    keeps the code in the run's job/ on the volume, where the next finds it and trains on."""
    from runner.backends.modal.app import CODE_MOUNT_ENV
    from tests.test_user_code import example

    service = container_modal()
    spec = example(tmp_path, "regression", train={"epochs": 100_000, "log_every_steps": 5,
                                                   "checkpoint_every_minutes": 10},
                   resources={"gpu": "A10G:1", "timeout_minutes": 60})
    run = cli("submit", spec, "--backend", "modal", "--detach", "--runs-dir", tmp_path / "runs").run_dir
    remote = tmp_path / "volume" / run.name
    wait_for(lambda: "fc-test-2" in service.calls, "the second call", timeout=240)
    assert CODE_MOUNT_ENV in service.call("fc-test-1")._container_env()
    assert CODE_MOUNT_ENV not in service.call("fc-test-2")._container_env()  # gpujob's image alone
    kept = remote / "job" / "modal-code" / "gpujob_examples" / "regression.py"
    assert kept.read_text() == (spec.parent / "gpujob_examples" / "regression.py").read_text()
    steps_before = len(read_jsonl(remote / "metrics.jsonl"))
    wait_for(lambda: len(read_jsonl_if(remote / "metrics.jsonl")) > steps_before + 2, "the second call's steps")
    assert cli("cancel", run).exit_code == 0
    service.wait_all()
    assert [how for how, _ in service.call("fc-test-2").attempts] == ["returned"]
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")
    assert not (run / "job" / "modal-code").exists()  # job/ on the volume is the chain's, not brought back


def test_cancel_in_the_second_call_of_a_detached_chain_stops_it_with_a_checkpoint(
        modal_spec, container_modal, tmp_path, short_calls):
    """The chain needs no terminal: submitted with --detach, it hands over by itself; status,
    logs and cancel find its live call; cancelled there, it checkpoints and spawns nothing more."""
    service = container_modal()
    run = cli("submit", _chained_spec(modal_spec, 10_000_000), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    remote = tmp_path / "volume" / run.name
    wait_for(lambda: "fc-test-2" in service.calls, "the second call", timeout=240)
    checkpoints_before = {p.name for p in (remote / "checkpoints").glob("step-*.pt")}
    steps_before = len(read_jsonl(remote / "metrics.jsonl"))
    wait_for(lambda: len(read_jsonl_if(remote / "metrics.jsonl")) > steps_before + 2, "the second call's steps")
    assert cli("status", run).stdout.strip() == f"{run.name}: running: on Modal (call fc-test-2)"
    assert "step " in cli("logs", run).stdout

    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert service.cancels == ["fc-test-2"]
    service.wait_all()
    assert list(service.calls) == ["fc-test-1", "fc-test-2"]  # no third call
    assert [how for how, _ in service.call("fc-test-2").attempts] == ["returned"]
    assert {p.name for p in (remote / "checkpoints").glob("step-*.pt")} - checkpoints_before  # its own checkpoint
    record = json.loads((run / "submission.json").read_text())
    assert record["handles"]["modal_calls"] == ["fc-test-1", "fc-test-2"]
    status = cli("status", run).stdout
    assert status.startswith(f"{run.name}: cancelled") and "gpujob resume" in status


def test_a_handover_whose_spawn_modal_refuses_is_retried_and_the_chain_goes_on(
        modal_spec, container_modal, tmp_path, short_calls):
    """Modal's trouble at the spawn inside the container fails that call's attempt, as any raise
    does: Modal retries it, the retry resumes from the checkpoint and hands over in its turn."""
    import modal.exception as errors

    service = container_modal()
    run = cli("submit", _chained_spec(modal_spec, 10_000_000), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    service.fail_next("spawn", errors.InternalError("internal"))  # the next spawn: the first call's handover
    wait_for(lambda: "fc-test-2" in service.calls, "the second call", timeout=300)
    assert service.call("fc-test-1").ended.wait(60)
    assert [how for how, _ in service.call("fc-test-1").attempts] == ["raised", "returned"]
    log = read_jsonl(tmp_path / "volume" / run.name / "modal_calls.jsonl")
    assert [(e["call"], e["handed_over"]) for e in log] == [(0, False), (0, True)]  # both attempts billed
    assert cli("cancel", run).exit_code == 0
    service.wait_all()
    assert list(service.calls) == ["fc-test-1", "fc-test-2"]


def test_a_chain_is_followed_past_calls_whose_results_modal_no_longer_keeps(
        modal_spec, container_modal, tmp_path, short_calls):
    """A finished call's result (which names its successor) is kept for a while only: once it has
    expired, status finds the next call through the handover the volume keeps."""
    service = container_modal()
    run = cli("submit", _chained_spec(modal_spec, 10_000_000), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    wait_for(lambda: "fc-test-2" in service.calls, "the second call", timeout=240)
    assert service.call("fc-test-1").ended.wait(60)
    service.expired = True  # fc-test-1's result, naming fc-test-2, is gone
    assert cli("status", run).stdout.strip() == f"{run.name}: running: on Modal (call fc-test-2)"
    assert json.loads((run / "submission.json").read_text())["handles"]["modal_calls"] == ["fc-test-1", "fc-test-2"]
    assert cli("cancel", run).exit_code == 0 and service.cancels == ["fc-test-2"]
