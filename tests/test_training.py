"""Real training on small data: the loss goes down and every artifact is written."""

import json
import struct

import pytest

from runner.spec.load import load_spec
from tests.conftest import cli, read_jsonl

SUMMARY_KEYS = {"train_loss", "test_loss", "test_accuracy", "epochs", "steps", "wall_s", "samples_per_s",
                "device", "world_size", "precision"}
EPOCH_TIMING_KEYS = {"epoch", "wall_s", "data_s", "compute_s", "samples_per_s"}


def test_fashion_mlp_learns_and_writes_every_artifact(fashion_spec, tmp_path):
    result = cli("submit", fashion_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.run_dir
    assert run.parent == tmp_path / "runs" and run.name.startswith("test-job-")
    assert {p.name for p in run.iterdir()} >= {"spec.yaml", "metrics.jsonl", "summary.json", "timing.json",
                                               "loss_curve.png", "env.json"}

    metrics = read_jsonl(run / "metrics.jsonl")
    steps = [m for m in metrics if m["kind"] == "step"]
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    assert len(epochs) == 3 and [e["epoch"] for e in epochs] == [1, 2, 3]
    assert len(steps) == 12  # 40 steps per epoch (2000/50), logged every 10
    for m in metrics:
        assert {"kind", "step", "epoch", "loss", "lr", "samples_per_s"} <= set(m)
    for e in epochs:
        assert {"test_loss", "test_accuracy"} <= set(e)
    # it learns: train and test loss fall every epoch, accuracy ends far above chance
    assert epochs[0]["loss"] > epochs[1]["loss"] > epochs[2]["loss"]
    assert epochs[0]["test_loss"] > epochs[2]["test_loss"]
    assert epochs[2]["test_accuracy"] > 0.5

    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["steps"] == 120 and summary["epochs"] == 3 and summary["world_size"] == 1
    assert summary["test_loss"] == pytest.approx(epochs[-1]["test_loss"])
    timing = json.loads((run / "timing.json").read_text())
    assert timing["time_to_first_step_s"] > 0 and timing["total_s"] >= timing["time_to_first_step_s"]
    assert [set(e) >= EPOCH_TIMING_KEYS for e in timing["epochs"]] == [True] * 3
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] and env["python"] and "devices" in env
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", (run / "loss_curve.png").read_bytes()[16:24])
    assert width > 400 and height > 300
    # the resolved spec is a valid spec that reproduces the run
    resolved = load_spec(run / "spec.yaml")
    assert resolved.train.epochs == 3 and resolved.optimizer.lr == 0.05
    assert result.stdout.strip().splitlines()[-1] == str(run)


def test_a_second_run_never_reuses_the_first_folder(fashion_spec, tmp_path):
    spec = fashion_spec(train={"epochs": 1, "max_steps": 3})
    first = cli("submit", spec, "--runs-dir", tmp_path).run_dir
    def contents(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    before = contents(first)
    second = cli("submit", spec, "--runs-dir", tmp_path).run_dir
    assert first != second
    assert contents(first) == before


def test_run_refuses_a_run_dir_that_holds_a_run(fashion_spec, tmp_path):
    spec = fashion_spec(train={"epochs": 1, "max_steps": 2})
    target = tmp_path / "mine"
    assert cli("run", spec, "--run-dir", target).exit_code == 0
    summary = (target / "summary.json").read_bytes()
    again = cli("run", spec, "--run-dir", target)
    assert again.exit_code == 2 and "never overwritten" in again.stderr
    assert (target / "summary.json").read_bytes() == summary


def test_max_steps_caps_training(fashion_spec, tmp_path):
    result = cli("run", fashion_spec(train={"epochs": 5, "max_steps": 45, "log_every_steps": 5}), "--runs-dir", tmp_path)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 45 and summary["epochs"] == 2  # 40 steps per epoch


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_step_per_batch(fashion_spec, tmp_path, schedule):
    spec = fashion_spec(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": schedule},
                        train={"epochs": 2, "log_every_steps": 10})
    run = cli("run", spec, "--runs-dir", tmp_path).run_dir
    lrs = [m["lr"] for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "step"]
    assert lrs[-1] < 0.01  # both anneal to (near) zero by the last step
    if schedule == "onecycle":
        assert max(lrs) > lrs[0]  # warms up first


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_the_optimizer_named_is_the_one_that_steps(fashion_spec, tmp_path, optimizer):
    spec = fashion_spec(optimizer={"name": optimizer, "lr": 0.002, "momentum": 0.9 if optimizer == "sgd" else 0,
                                   "weight_decay": 0.05}, train={"epochs": 2, "log_every_steps": 10})
    run = cli("run", spec, "--runs-dir", tmp_path).run_dir
    epochs = [m for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "epoch"]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    from runner.training.checkpoint import CheckpointStore, read_checkpoint

    state = read_checkpoint(CheckpointStore(run).paths()[0])["optimizer"]
    group, (first,) = state["param_groups"][0], list(state["state"].values())[:1]
    assert group["weight_decay"] == 0.05
    if optimizer == "sgd":
        assert set(first) == {"momentum_buffer"}
    else:  # Adam's two moments; AdamW's weight decay is decoupled from them, Adam's is not
        assert {"exp_avg", "exp_avg_sq"} <= set(first)
        assert group["decoupled_weight_decay"] is (optimizer == "adamw")


def test_adam_and_adamw_differ_once_there_is_weight_decay(fashion_spec, tmp_path):
    import torch

    weights = {}
    for name in ("adam", "adamw"):
        spec = fashion_spec(optimizer={"name": name, "lr": 0.01, "weight_decay": 0.1}, train={"epochs": 1})
        weights[name] = torch.load(cli("run", spec, "--runs-dir", tmp_path / name).run_dir / "model.pt")
    assert any(not torch.equal(weights["adam"][k], weights["adamw"][k]) for k in weights["adam"])


@pytest.mark.parametrize("precision, dtype", [("bf16", "torch.bfloat16"), ("fp32", "torch.float32")])
def test_the_precision_asked_for_is_what_the_forward_pass_computes_in(write_spec, tmp_path, precision, dtype,
                                                                      monkeypatch):
    from tests import plugins

    plugins.SEEN_DTYPES.clear()
    monkeypatch.setenv(plugins.PROBE_LOG, str(tmp_path / "probe.log"))
    spec = write_spec(model={"name": "tests.plugins:probe"}, data={"dataset": "digits", "batch_size": 64},
                      train={"epochs": 1, "max_steps": 3, "precision": precision})
    result = cli("run", spec, "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    plugins.read_probe_log(tmp_path / "probe.log")
    assert plugins.SEEN_DTYPES and set(plugins.SEEN_DTYPES) == {dtype}  # training and evaluation
    assert json.loads((result.run_dir / "summary.json").read_text())["precision"] == precision


def test_fp16_on_cpu_is_a_clear_error(fashion_spec, tmp_path):
    result = cli("run", fashion_spec(train={"precision": "fp16"}), "--runs-dir", tmp_path)
    assert result.exit_code == 2
    assert "train.precision" in result.stderr and "fp16" in result.stderr


@pytest.mark.parametrize("compiled", [True, False])
def test_compile_is_applied_when_asked_and_only_then(write_spec, tmp_path, compiled, monkeypatch):
    from tests import plugins

    plugins.SEEN_COMPILING.clear()
    monkeypatch.setenv(plugins.PROBE_LOG, str(tmp_path / "probe.log"))
    spec = write_spec(model={"name": "tests.plugins:probe"}, data={"dataset": "digits", "batch_size": 64},
                      train={"epochs": 1, "compile": compiled})
    result = cli("run", spec, "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    plugins.read_probe_log(tmp_path / "probe.log")
    assert (True in plugins.SEEN_COMPILING) is compiled  # torch.compile traced the training forward pass


def test_quickstart_job_on_digits_reaches_high_accuracy(tmp_path):
    from pathlib import Path

    job = Path(__file__).parents[1] / "jobs" / "quickstart.yaml"
    result = cli("submit", job, "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert json.loads((result.run_dir / "summary.json").read_text())["test_accuracy"] > 0.9


def test_factory_model_and_dataset_use_the_dataloader_path(write_spec, tmp_path):
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp", "args": {"hidden": 16}},
                      data={"dataset": "tests.plugins:blobs", "batch_size": 32, "num_workers": 0},
                      optimizer={"name": "adam", "lr": 0.01}, train={"epochs": 3})
    result = cli("run", spec, "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9


def test_synthetic_data_of_a_declared_shape(write_spec, tmp_path):
    spec = write_spec(model={"name": "cnn"}, data={"dataset": "synthetic", "batch_size": 32,
                      "synthetic": {"shape": [3, 16, 16], "num_classes": 5, "train_samples": 256, "test_samples": 64}},
                      optimizer={"name": "adam", "lr": 0.003}, train={"epochs": 2})
    result = cli("run", spec, "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    import torch

    weights = torch.load(result.run_dir / "model.pt")
    assert weights["0.weight"].shape[1] == 3  # the first conv takes the declared 3 channels
    assert weights["8.weight"].shape[0] == 5  # and the last layer gives the declared 5 classes
    assert json.loads((result.run_dir / "summary.json").read_text())["epochs"] == 2


def test_a_failing_user_model_exits_1_and_keeps_the_traceback(write_spec, tmp_path):
    spec = write_spec(model={"name": "tests.plugins:exploding"}, data={"dataset": "digits"})
    result = cli("run", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert "shape mismatch in user code" in result.stderr and "error.log" in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert "Traceback" in (run / "error.log").read_text()
    assert not (run / "summary.json").exists()


def test_data_errors_name_the_field(write_spec, tmp_path):
    missing = write_spec(data={"dataset": "fashion_mnist", "root": str(tmp_path / "empty"), "download": False})
    result = cli("run", missing, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "data.root" in result.stderr
    too_big = write_spec(data={"dataset": "digits", "batch_size": 100000})
    result = cli("run", too_big, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "data.batch_size" in result.stderr
    factory_typo = write_spec(model={"name": "tests.plugins:nope"})
    result = cli("run", factory_typo, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "model.name" in result.stderr
    assert list((tmp_path / "runs").iterdir()) == []  # bad input leaves no half-written run folder
