"""`gpujob watch RUN` (issue 26): a live panel that follows a detached run to its end and exits
with the run's exit code; what it shows is read from the run folder as the job writes it."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from runner.reports.watching import panel, read_progress
from runner.spec.model import JobSpec
from tests.conftest import cli


def _detached(write_spec, tmp_path, **train):
    spec = write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                      train={"epochs": 5, "log_every_steps": 5, **train})
    submitted = cli("submit", spec, "--detach", "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    return submitted.run_dir


def test_watch_follows_a_detached_run_to_its_end_and_exits_0(write_spec, tmp_path):
    run = _detached(write_spec, tmp_path)
    watched = cli("watch", run, "--every", "0.3")
    assert watched.exit_code == 0, watched.stderr
    summary = json.loads((run / "summary.json").read_text())  # it ended before watch did
    assert "epoch 5/5" in watched.stdout and f"test_accuracy {summary['test_accuracy']:.2%}" in watched.stdout
    assert watched.stdout.splitlines()[-1].startswith(f"{run.name}: finished: ")


def test_watch_exits_with_a_failed_runs_exit_code(write_spec, tmp_path):
    spec = write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 1e30}, train={"epochs": 5, "log_every_steps": 1})
    submitted = cli("submit", spec, "--detach", "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    watched = cli("watch", run.name, "--runs-dir", tmp_path / "runs", "--every", "0.3")
    assert watched.exit_code == 1, watched.stderr + watched.stdout  # the loss went NaN: train.stop_on_nan
    assert watched.stdout.splitlines()[-1].startswith(f"{run.name}: failed: ")


def test_watch_refuses_what_is_not_a_run_or_a_bad_interval(write_spec, tmp_path):
    assert cli("watch", tmp_path / "nothing").exit_code == 2
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    result = cli("watch", run)
    assert result.exit_code == 2 and "not a gpujob run" in result.stderr
    assert cli("watch", run, "--every", "0").exit_code == 2


def test_the_panel_reads_progress_time_left_utilisation_and_cost_from_the_folder(tmp_path):
    lines = [{"kind": "step", "step": 10, "epoch": 1, "loss": 2.0, "lr": 0.1, "samples_per_s": 640.0},
             {"kind": "epoch", "step": 20, "epoch": 1, "loss": 1.9, "samples_per_s": 600.0, "test_loss": 1.5,
              "test_accuracy": 0.5},
             {"kind": "step", "step": 30, "epoch": 2, "loss": 1.2, "lr": 0.1, "samples_per_s": 640.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "st')
    (tmp_path / "utilisation.jsonl").write_text(json.dumps(
        {"t": 5, "device": "cuda:0", "util_percent": 42, "memory_used_bytes": 3 * 2**30, "power_w": 150.0,
         "temperature_c": 61, "throttle": ["SwPowerCap"]}) + "\n")
    spec = JobSpec(name="j", data={"batch_size": 64}, train={"epochs": 4}, resources={"gpu": "A10G:2"})
    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")
    p = read_progress(tmp_path, spec, "modal", an_hour_ago)
    assert (p.epoch, p.step, p.total_steps) == (1, 30, 80)  # 20 steps an epoch, from the first epoch's line
    assert p.eta_s == (80 - 30) * 64 / 640.0
    assert abs(p.cost_so_far_usd - 2 * 1.10) < 0.01  # A10G:2 at Modal's list price for an hour
    assert abs(p.cost_to_end_usd - p.cost_so_far_usd - 2 * 1.10 * p.eta_s / 3600) < 1e-6
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(panel("j-1", "modal", "running: on Modal", p))
    shown = console.export_text()
    for text in ("epoch 1/4", "step 30/80", "about 5 s", "1.2000 at step 30", "test_accuracy 50.00%",
                 "cuda:0 busy 42%, 3.0 GiB, 150 W, 61 C, throttled: SwPowerCap", "$2.20 so far"):
        assert text in shown, text


def test_watch_follows_a_detached_modal_run_from_its_output_to_its_end(write_spec, tmp_path, monkeypatch, use_backend):
    import pytest

    pytest.importorskip("modal", reason="the modal extra is not installed (uv sync --extra modal)")
    from runner.backends.modal.app import VOLUME_PATH_ENV
    from runner.backends.modal.service import ModalService
    from tests.modal_standin import ContainerModal

    monkeypatch.setenv(VOLUME_PATH_ENV, str(tmp_path / "volume"))
    service = ContainerModal(tmp_path / "volume", tmp_path / "modal-calls")
    use_backend("modal", connect=lambda: ModalService(service))
    try:
        spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                          train={"epochs": 3, "log_every_steps": 2}, resources={"gpu": "A10G:1"}, backend="modal")
        submitted = cli("submit", spec, "--detach", "--runs-dir", tmp_path / "runs")
        assert submitted.exit_code == 0, submitted.stderr
        watched = cli("watch", submitted.run_dir, "--every", "0.5")
    finally:
        service.stop_all()
    assert watched.exit_code == 0, watched.stderr + watched.stdout
    assert watched.stdout.splitlines()[-1].startswith(f"{submitted.run_dir.name}: finished")
    # the folder is on Modal's volume until fetched: the panel shows the job's latest progress line from its output
    assert "latest" in watched.stdout and "epoch 3/3" in watched.stdout and "epoch 0/3" not in watched.stdout
