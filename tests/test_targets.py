"""train.stop_when (docs/targets-and-budgets.md): a run stops at the end of the first epoch that
reaches its target, says so in summary.json, and a resume does nothing more."""


import json
import subprocess
import sys
import math

import pytest

from runner.errors import GpujobError
from runner.spec.load import load_spec
from tests.conftest import cli, read_jsonl



@pytest.mark.parametrize("stop_when, said", [
    ({"test_accuracy": ">= 95"}, "test_accuracy is a fraction from 0 to 1"),
    ({"test_acc": ">= 0.9"}, "did you mean `test_accuracy`"),
    ({"test_loss": "about 0.2"}, "'about 0.2' is not a condition"),
    ({"test_loss": 0.2}, "is not a condition"),
    ({"test_loss": "=> 0.2"}, "is not a condition"),
])
def test_a_bad_target_names_the_field(write_spec, stop_when, said):
    with pytest.raises(GpujobError) as err:
        load_spec(write_spec(train={"stop_when": stop_when}))
    assert err.value.exit_code == 2
    assert "train.stop_when" in err.value.message and said in err.value.message


def test_a_user_step_has_no_accuracy_but_its_own_values(write_spec):
    with pytest.raises(GpujobError, match="test_accuracy is measured by the default step only"):
        load_spec(write_spec(train={"step": "job:step", "stop_when": {"test_accuracy": ">= 0.9"}}))
    spec = load_spec(write_spec(train={"step": "job:step", "stop_when": {"iou": "> 0.5", "test_loss": "<= .2"}}))
    assert spec.train.stop_when == {"iou": "> 0.5", "test_loss": "<= .2"}


TIMING_ONLY = {"samples_per_s", "wall_s", "stopped_by", "prediction"}  # and what the target adds


@pytest.fixture
def digits_cnn(write_spec):
    def make(filename="job.yaml", **train):
        return write_spec(filename, model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                          optimizer={"name": "adam", "lr": 0.003},
                          train={"epochs": 6, "log_every_steps": 10, **train})
    return make


def _curve(run):
    return [{k: v for k, v in m.items() if k not in TIMING_ONLY} for m in read_jsonl(run / "metrics.jsonl")]


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_a_run_stops_at_the_first_epoch_that_reaches_its_target(digits_cnn, tmp_path):
    plain = cli("run", digits_cnn("plain.yaml"), "--runs-dir", tmp_path / "plain")
    assert plain.exit_code == 0, plain.stderr
    reached = [m["epoch"] for m in read_jsonl(plain.run_dir / "metrics.jsonl")
               if m["kind"] == "epoch" and m["test_accuracy"] >= 0.95]
    assert reached and 1 < reached[0] < 6, reached  # the spec is one that reaches it midway

    aimed = cli("run", digits_cnn(stop_when={"test_accuracy": ">= 0.95"}), "--runs-dir", tmp_path / "aimed")
    assert aimed.exit_code == 0, aimed.stderr
    expected = [m for m in _curve(plain.run_dir) if m["epoch"] <= reached[0]]
    expected = expected[:max(i for i, m in enumerate(expected) if m["kind"] == "epoch") + 1]
    assert _curve(aimed.run_dir) == expected  # the same steps, then stopped at that epoch's end
    summary = _summary(aimed.run_dir)
    assert (summary["stopped_by"], summary["target_met"], summary["target_epoch"]) == ("target", True, reached[0])
    assert summary["epochs"] == reached[0] and summary["target"] == "test_accuracy >= 0.95"
    assert summary["target_wall_s"] > 0 and summary["target_usd"] is None  # nothing is priced here
    predicted = [m for m in read_jsonl(aimed.run_dir / "metrics.jsonl") if m.get("prediction")]
    assert [p["epoch"] for p in predicted] == list(range(3, reached[0]))  # from the third epoch on, until met
    assert summary["target_predictions"] == [{"at_epoch": m["epoch"], **m["prediction"]} for m in predicted]
    assert all(p["prediction"]["low"] <= p["prediction"]["epoch"] <= p["prediction"]["high"] for p in predicted)
    assert "epoch 3  train_loss" in cli("logs", aimed.run_dir).stdout  # the epoch lines say it
    assert f"target ~epoch {predicted[0]['prediction']['epoch']} (" in cli("logs", aimed.run_dir).stdout
    assert f"target: test_accuracy >= 0.95 met at epoch {reached[0]}" in aimed.stderr + aimed.stdout
    assert _summary(plain.run_dir)["stopped_by"] == "epochs" and "target" not in _summary(plain.run_dir)

    dry = cli("submit", digits_cnn(stop_when={"test_accuracy": ">= 0.95"}), "--dry-run", "--runs-dir",
              tmp_path / "plain")  # the dry run reads the curve of the run like it
    assert dry.exit_code == 0, dry.stderr
    assert f"target test_accuracy >= 0.95: run {plain.run_dir.name} of this model, data and optimizer met it at " \
           f"epoch {reached[0]}: " in dry.stdout
    farther = cli("submit", digits_cnn(stop_when={"test_accuracy": ">= 0.995"}), "--dry-run", "--runs-dir",
                  tmp_path / "plain")
    assert f"~epoch 11 (10-11) by the fit of run {plain.run_dir.name}'s curve (6 epochs" in farther.stdout, \
        farther.stdout

    again = cli("resume", aimed.run_dir)
    assert again.exit_code == 0 and "nothing to resume" in again.stderr
    further = cli("resume", aimed.run_dir, "--here", "--set", "train.epochs=8")
    assert further.exit_code == 0, further.stderr
    assert _curve(aimed.run_dir) == expected  # a run that met its target trains no more
    assert _summary(aimed.run_dir)["target_epoch"] == reached[0]


def test_a_run_that_ends_without_its_target_says_so(digits_cnn, tmp_path):
    result = cli("run", digits_cnn(epochs=2, stop_when={"test_loss": "<= 0.001"}), "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    summary = _summary(result.run_dir)
    assert (summary["stopped_by"], summary["target_met"], summary["epochs"]) == ("epochs", False, 2)
    assert "target_epoch" not in summary
    assert "target: test_loss <= 0.001 not met in 2 epoch(s)" in result.stderr + result.stdout


def test_every_ddp_rank_stops_at_the_target_together(digits_cnn, tmp_path):
    result = cli("run", digits_cnn(stop_when={"test_accuracy": ">= 0.8"}), "--runs-dir", tmp_path,
                 "--nproc-per-node", "2")
    assert result.exit_code == 0, result.stderr
    summary = _summary(result.run_dir)
    assert summary["world_size"] == 2 and summary["target_met"] and 1 < summary["epochs"] < 6


def test_the_prediction_follows_a_power_law_and_says_nothing_it_cannot_support():
    from runner.spec.targets import parse_condition
    from runner.training.prediction import predict

    accuracy = parse_condition("test_accuracy", ">= 0.99")
    curve = [(t, 1 - 0.5 * t ** -1.0) for t in range(1, 8)]  # 1 - accuracy = 0.5/t: 0.01 at epoch 50
    exact = predict(accuracy, curve)
    assert exact is not None and [exact.low, exact.epoch, exact.high] == pytest.approx([50, 50, 50])
    noisy = predict(accuracy, [(t, a + (0.01 if t % 2 else -0.01)) for t, a in curve])
    assert noisy is not None and noisy.low < noisy.epoch < noisy.high and noisy.from_epochs == 6
    assert predict(accuracy, curve[:2]) is None  # too few points
    assert predict(accuracy, [(t, 0.9 - 0.05 * t) for t in range(1, 8)]) is None  # a falling accuracy
    assert predict(accuracy, [(1, 0.5), (2, 0.6), (3, 0.5), (4, 0.6), (5, 0.5)]) is None  # no trend to bound
    loss = parse_condition("test_loss", "<= 0.1")
    assert predict(loss, [(t, 2.0 * t ** -0.5) for t in range(1, 6)]).epoch == pytest.approx(400)
    falling = [(t, 0.5 * math.exp(-0.2 * t)) for t in range(1, 6)]  # an exponential fits it better: it is one
    assert predict(loss, [(t, v + 0.1) for t, v in falling]) is not None
    assert predict(parse_condition("test_loss", "<= 0.01"), falling).epoch == pytest.approx(math.log(50) / 0.2)
    score = parse_condition("iou", ">= 0.8")  # a value of the user's, no floor: y = a + b ln t
    assert predict(score, [(t, 0.2 + 0.1 * math.log(t)) for t in range(1, 6)]).epoch == pytest.approx(math.e ** 6)


def test_status_of_a_running_run_says_the_latest_prediction(digits_cnn, tmp_path):
    from tests.conftest import cli_subprocess, read_jsonl_if, wait_for

    spec = digits_cnn(epochs=2000, stop_when={"test_accuracy": ">= 0.995"})  # far off: it runs on
    runs = tmp_path / "runs"
    job = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--runs-dir", str(runs)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(r.get("prediction") for folder in runs.glob("*")
                             for r in read_jsonl_if(folder / "metrics.jsonl")), "a prediction", timeout=300)
        (run,) = runs.iterdir()
        said = cli_subprocess("status", run).stdout.splitlines()
        assert said[0].startswith(f"{run.name}: running") and said[1].startswith("after epoch ")
        assert "target ~epoch " in said[1]
    finally:
        job.terminate()
        job.wait(timeout=120)
