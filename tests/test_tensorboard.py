"""TensorBoard (issue 26): every run writes event files in RUN/tensorboard/, read back here with
TensorBoard's own reader (EventAccumulator); a run without the tensorboard package writes none
and fails nothing; `gpujob tensorboard` serves them, or says how to install it (exit 3)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runner.training.tensorboard_events import TENSORBOARD_DIR
from tests.conftest import REPO, cli, read_jsonl, wait_for

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (uv sync --extra tensorboard)")


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / TENSORBOARD_DIR))
    accumulator.Reload()
    return accumulator


def _scalars(accumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def _spec(write_spec, **train):
    return write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05},
                      train={"epochs": 2, "log_every_steps": 5, **train})


def test_a_run_writes_its_steps_epochs_and_hyperparameters_for_tensorboard(write_spec, tmp_path):
    result = cli("submit", _spec(write_spec), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    events = _events(run)
    metrics = read_jsonl(run / "metrics.jsonl")
    steps = [m for m in metrics if m["kind"] == "step"]
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    for key in ("loss", "lr", "samples_per_s"):
        assert _scalars(events, f"step/{key}") == [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in steps]
    assert _scalars(events, "epoch/test_accuracy") == [(m["step"], pytest.approx(m["test_accuracy"], rel=1e-6))
                                                       for m in epochs]
    assert _scalars(events, "epoch/train_loss") == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in epochs]
    assert [value for _, value in _scalars(events, "epoch/epoch")] == [1.0, 2.0]
    # the HParams view: the experiment and this run's session, with the spec's values
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {key: value for key, value in session.session_start_info.hparams.items()}
    assert hparams["model"].string_value == "cnn" and hparams["lr"].number_value == pytest.approx(0.05)
    assert hparams["batch_size"].number_value == 64 and hparams["world_size"].number_value == 1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert "epoch/test_accuracy" in [m.name.tag for m in experiment.experiment.metric_infos]


def test_the_users_named_values_are_scalars_too(tmp_path):
    import shutil

    for name in ("regression.yaml", "gpujob_examples"):
        source = REPO / "jobs" / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    result = cli("submit", tmp_path / "regression.yaml", "--set", "train.epochs=2", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    events = _events(result.run_dir)
    epochs = [m for m in read_jsonl(result.run_dir / "metrics.jsonl") if m["kind"] == "epoch"]
    named = next(iter(epochs[-1]["test_metrics"]))
    assert _scalars(events, f"epoch/test_{named}")[-1][1] == pytest.approx(epochs[-1]["test_metrics"][named], rel=1e-6)


def test_a_run_trained_on_adds_its_steps_after_the_first_attempts_each_once(write_spec, tmp_path):
    spec = _spec(write_spec, epochs=3, checkpoint_every_minutes=0)
    first = cli("submit", spec, "--set", "train.max_steps=30", "--runs-dir", tmp_path / "runs")
    assert first.exit_code == 0, first.stderr
    run = first.run_dir
    resumed = cli("resume", run, "--set", "train.max_steps=69")
    assert resumed.exit_code == 0, resumed.stderr
    # as metrics.jsonl has them: every step once, the first attempt's up to its checkpoint, then the second's
    logged = [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in read_jsonl(run / "metrics.jsonl")
              if m["kind"] == "step"]
    assert _scalars(_events(run), "step/loss") == logged and logged[-1][0] > 30
    assert len(list((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2


def test_without_the_tensorboard_package_a_run_writes_no_events_and_fails_nothing(write_spec, tmp_path, monkeypatch):
    from runner.launching.worker import run_worker
    from runner.spec.load import load_spec

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.raises(ImportError):
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    run = run_worker(load_spec(_spec(write_spec, epochs=1)), run_dir=tmp_path / "run", quiet=True)
    assert run is not None and (run / "summary.json").is_file() and not (run / TENSORBOARD_DIR).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpujob_tensorboard_serves_the_runs_events(write_spec, tmp_path):
    result = cli("submit", _spec(write_spec, epochs=1), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "runner.cli", "tensorboard", str(tmp_path / "runs"),
                               "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        def listed() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as reply:
                    return bool(json.loads(reply.read()))
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                return False

        wait_for(listed, "TensorBoard to list the run", timeout=120, poll=0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as reply:
            assert json.loads(reply.read()) == [f"{result.run_dir.name}/{TENSORBOARD_DIR}"]
    finally:
        server.terminate()
        server.wait(30)


def test_gpujob_tensorboard_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    (tmp_path / "runs").mkdir()
    result = cli("tensorboard", tmp_path / "runs")
    assert result.exit_code == 3 and "uv sync --extra tensorboard" in result.stderr


def test_gpujob_tensorboard_refuses_a_folder_without_runs(tmp_path):
    result = cli("tensorboard", tmp_path / "nothing")
    assert result.exit_code == 2 and "nothing" in result.stderr
