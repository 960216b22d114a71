"""The user's own model, data and training step (train.step), and the code that ships with a job.

The worked examples (jobs/regression.yaml, jobs/autoencoder.yaml, their code in
jobs/gpujob_examples/) are run as a user runs them; the backends' own tests (test_modal,
test_docker, test_slurm, test_vast, test_kaggle) run them where each backend runs jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, cli, cli_subprocess, read_jsonl

EXAMPLES = REPO / "jobs" / "gpujob_examples"


def example(tmp_path: Path, name: str, **overrides) -> Path:
    """jobs/NAME.yaml and its code copied into their own folder (the spec's folder is where its
    code is found), with `overrides` ({section: {field: value}}) applied."""
    folder = tmp_path / f"{name}-job"
    folder.mkdir()
    shutil.copytree(EXAMPLES, folder / EXAMPLES.name, ignore=shutil.ignore_patterns("__pycache__"))
    spec = yaml.safe_load((REPO / "jobs" / f"{name}.yaml").read_text())
    for section, fields in overrides.items():
        spec[section] = {**spec.get(section, {}), **fields} if isinstance(fields, dict) else fields
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / f"{name}.yaml"


def epochs(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]


def assert_the_loss_falls(run: Path) -> None:
    curve = epochs(run)
    assert curve[-1]["loss"] < 0.8 * curve[0]["loss"], curve
    assert curve[-1]["test_loss"] < curve[0]["test_loss"], curve


# ---- the worked examples, as a user runs them ------------------------------------------------


def test_the_regression_example_trains_with_its_own_loss_and_reports_its_named_value(tmp_path):
    """From the repository root, as the README says: the code is found beside the spec."""
    out = cli_subprocess("submit", REPO / "jobs" / "regression.yaml", "--runs-dir", tmp_path / "runs", cwd=REPO)
    assert out.returncode == 0, out.stderr
    run = Path(out.stdout.strip().splitlines()[-1])
    assert_the_loss_falls(run)
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(set(r["metrics"]) == {"mae"} for r in steps)
    last = epochs(run)[-1]
    assert set(last["metrics"]) == set(last["test_metrics"]) == {"mae"} and last["test_accuracy"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] is None and summary["test_metrics"] == last["test_metrics"]
    assert summary["metrics"] == last["metrics"]
    assert f"done: test_mae {last['test_metrics']['mae']:.4g}  test_loss" in out.stdout
    assert "test_accuracy" not in out.stdout
    assert (run / "loss_curve.png").stat().st_size > 10_000
    weights = torch.load(run / "model.pt")
    assert weights["4.weight"].shape == (1, 32)  # the factory's model, with its args: one output


def test_the_autoencoder_example_minimises_a_reconstruction_loss_on_the_digits(tmp_path):
    result = cli("submit", example(tmp_path, "autoencoder", train={"epochs": 4}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert_the_loss_falls(result.run_dir)
    assert epochs(result.run_dir)[-1]["test_accuracy"] is None
    assert "metrics" not in epochs(result.run_dir)[-1]  # a step that returns the loss alone names nothing


STEPS = '''
import torch
from torch.nn import functional as F


def twice(model, batch):
    """The default loss, and the same loss doubled as a named value: its averages must be exactly
    twice the loss's, in training and in evaluation."""
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    return loss, {"twice": 2 * loss, "as_float": float(loss.detach())}


def on_dicts(model, batch):
    return F.cross_entropy(model(batch["image"]), batch["label"])


def wrong_type(model, batch):
    return "not a loss"


def raises(model, batch):
    raise ValueError("a bug in the user's step")


def raises_later(model, batch):
    raises_later.calls = getattr(raises_later, "calls", 0) + 1
    if raises_later.calls > 5:
        raise ValueError("a bug that shows only at step 6")
    x, y = batch
    return F.cross_entropy(model(x), y)


def one_argument(model):
    return model


class Dicts(torch.utils.data.Dataset):
    num_classes = 10

    def __init__(self, train, root):
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        cut = 1400
        x, y = (x[:cut], y[:cut]) if train else (x[cut:], y[cut:])
        self.x, self.y = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}
'''


@pytest.fixture
def user_steps(write_spec, tmp_path):
    (tmp_path / "my_steps.py").write_text(STEPS)

    def spec(step: str, **sections):
        sections = {"model": {"name": "mlp"}, "data": {"dataset": "digits", "batch_size": 64},
                    "optimizer": {"name": "sgd", "lr": 0.1}, **sections}
        sections["train"] = {"epochs": 2, "log_every_steps": 5, "step": f"my_steps:{step}", **sections.get("train", {})}
        return write_spec(**sections)

    return spec


def test_named_values_are_averaged_like_the_loss_in_training_and_evaluation(user_steps, tmp_path):
    result = cli("submit", user_steps("twice"), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    for r in records:
        assert r["metrics"]["twice"] == pytest.approx(2 * r["loss"], rel=1e-6), r
        assert r["metrics"]["as_float"] == pytest.approx(r["loss"], rel=1e-6), r  # a plain float is a value too
    for r in epochs(result.run_dir):
        assert r["test_metrics"]["twice"] == pytest.approx(2 * r["test_loss"], rel=1e-6), r
        assert r["test_accuracy"] is None  # reported for the default step only


def test_a_dataset_may_yield_dicts_which_reach_the_step_on_the_device(user_steps, tmp_path):
    spec = user_steps("on_dicts", data={"dataset": "my_steps:Dicts", "batch_size": 50, "num_workers": 0},
                      train={"epochs": 5})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert_the_loss_falls(result.run_dir)


@pytest.mark.parametrize("step, command, said", [
    ("nowhere", "validate", "train.step: my_steps has no callable nowhere"),
    ("one_argument", "validate", "train.step: my_steps:one_argument must take (model, batch)"),
    ("wrong_type", "dry-run", "train.step: my_steps:wrong_type returned str as the loss; it must return a loss "
                              "tensor, or (loss, {name: value})"),
    ("raises", "dry-run", "train.step: my_steps:raises raised ValueError on one batch of the data: a bug in the "
                          "user's step"),
])
def test_a_step_that_cannot_work_is_one_line_and_exit_2_before_anything_runs(user_steps, tmp_path, step, command,
                                                                             said):
    spec = user_steps(step)
    args = ("validate", spec) if command == "validate" else ("submit", spec, "--dry-run")
    result = cli_subprocess(*args, "--runs-dir", tmp_path / "runs") if command != "validate" else \
        cli_subprocess(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"gpujob: {said}"]
    assert not (tmp_path / "runs").exists()


def test_a_module_that_is_nowhere_is_named_with_where_it_was_looked_for(write_spec, tmp_path):
    spec = write_spec(train={"step": "not_a_module_here:step"})
    result = cli_subprocess("validate", spec)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gpujob: train.step: cannot find module not_a_module_here beside the spec, in the current "
                           f"directory or on PYTHONPATH (looked in {tmp_path}")


def test_a_step_failing_later_in_training_is_exit_1_with_its_traceback_kept(user_steps, tmp_path):
    result = cli_subprocess("submit", user_steps("raises_later"), "--runs-dir", tmp_path / "runs")
    assert result.returncode == 1
    assert "ValueError: a bug that shows only at step 6" in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert "raises_later" in (run / "error.log").read_text()  # the user's own frame, in the traceback


def test_two_workers_with_a_user_step_follow_the_one_worker_curve(tmp_path):
    spec = example(tmp_path, "regression", train={"epochs": 3}, data={"batch_size": 32, "num_workers": 0})
    one = cli("submit", spec, "--runs-dir", tmp_path / "one")
    two = cli("submit", spec, "--set", "resources.processes=2", "--runs-dir", tmp_path / "two")
    assert one.exit_code == 0 and two.exit_code == 0, (one.stderr, two.stderr)
    a, b = read_jsonl(one.run_dir / "metrics.jsonl"), read_jsonl(two.run_dir / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["metrics"]["mae"] == pytest.approx(y["metrics"]["mae"], rel=1e-4)
        if x["kind"] == "epoch":
            assert x["test_metrics"]["mae"] == pytest.approx(y["test_metrics"]["mae"], rel=1e-4)
    assert json.loads((two.run_dir / "summary.json").read_text())["world_size"] == 2


def test_kill_9_and_resume_with_a_user_step_is_bit_identical(tmp_path):
    """The kill-and-resume driver of tests/test_resume.py, on the regression example: the named
    values' running sums are in every checkpoint too."""
    spec = example(tmp_path, "regression", train={"epochs": 4, "checkpoint_every_minutes": 0, "log_every_steps": 3})
    env = {**os.environ, "GPUJOB_CODE_PATHS": str(spec.parent)}
    out = subprocess.run([sys.executable, "-m", "tests.kill_resume_driver", str(spec), str(tmp_path / "kills"), "6",
                          "99"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    reference = tmp_path / "kills" / "reference"
    assert any(a["killed"] for a in report["tries"]), report
    for attempt in report["tries"]:
        run = tmp_path / "kills" / attempt["dir"]
        assert attempt["resume_exit"] == 0, attempt
        a, b = read_jsonl(run / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
        strip = ("samples_per_s", "wall_s")
        assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
               [{k: v for k, v in r.items() if k not in strip} for r in b], attempt
        wa, wb = torch.load(run / "model.pt"), torch.load(reference / "model.pt")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), attempt


# ---- what is shipped ---------------------------------------------------------------------------


def test_the_dry_run_names_every_file_shipped_and_their_size(tmp_path):
    spec = example(tmp_path, "regression")
    (spec.parent / "gpujob_examples" / "notes.txt").write_text("kept with the package: shipped too\n")
    (spec.parent / "unrelated.csv").write_text("x\n" * 1000)  # beside the spec, not in the package
    (spec.parent / "gpujob_examples" / "__pycache__").mkdir()
    (spec.parent / "gpujob_examples" / "__pycache__" / "x.pyc").write_bytes(b"0" * 100)
    out = cli_subprocess("submit", spec, "--backend", "modal", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.lstrip().startswith("your code")]
    files = sorted(p for p in (spec.parent / "gpujob_examples").iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    assert f"gpujob_examples/: {len(files)} file(s), {total / 1e3:.1f} KB" in row
    for path in files:
        assert f"gpujob_examples/{path.name}" in row
    assert "unrelated.csv" not in row and ".pyc" not in row
    assert "shipped with the job (copied into job/code)" in row
    here = cli_subprocess("submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert "imported where it is (this machine)" in here.stdout


def test_code_past_the_limit_is_refused_naming_the_biggest_file(tmp_path):
    spec = example(tmp_path, "regression")
    big = spec.parent / "gpujob_examples" / "weights.bin"
    big.write_bytes(os.urandom(3_000_000))
    result = cli_subprocess("submit", spec, "--set", "code.max_mb=2", "--dry-run")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gpujob: code.max_mb: the code to ship (gpujob_examples) is 3.0 MB, past 2 MB; "
                           f"the largest file is {big.resolve()} (3.0 MB)")
    assert cli_subprocess("submit", spec, "--set", "code.max_mb=5", "--dry-run").returncode == 0


def test_code_the_shipped_copy_cannot_import_is_refused_at_submit_with_the_fix(tmp_path):
    """A factory module importing a sibling package that the spec does not name: it imports
    here (the spec's folder is on the path), not from the copy a backend ships. Said at submit
    time; code.include ships the sibling too."""
    spec = example(tmp_path, "regression")
    (spec.parent / "helpers").mkdir()
    (spec.parent / "helpers" / "__init__.py").write_text("HIDDEN = 32\n")
    module = spec.parent / "gpujob_examples" / "regression.py"
    module.write_text("import helpers\n" + module.read_text())
    out = cli_subprocess("submit", spec, "--backend", "modal", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gpujob: model.name: gpujob_examples.regression does not import from the code shipped with the job "
        "(ModuleNotFoundError: No module named 'helpers'); add the modules it needs to code.include, or install "
        "them in the image"]
    fixed = cli_subprocess("submit", spec, "--backend", "modal", "--dry-run", "--set", "code.include=[helpers]",
                           "--runs-dir", tmp_path / "runs")
    assert fixed.returncode == 0, fixed.stderr
    assert "helpers/: " in fixed.stdout or "helpers/__init__.py" in fixed.stdout


def test_a_detached_run_finds_the_code_beside_its_spec_when_submitted_from_elsewhere(tmp_path):
    """Seen: `gpujob submit ../job/regression.yaml --detach` from another folder failed in the
    background with "cannot import gpujob_examples", though the same command attached trained:
    the detached `gpujob run job/spec.yaml` looked beside the run's copy of the spec and in the
    current folder, not beside the spec as submitted."""
    from tests.conftest import cli_subprocess, wait_for

    spec = example(tmp_path, "regression", train={"epochs": 2})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli_subprocess("submit", spec, "--detach", "--runs-dir", tmp_path / "runs", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    run = Path(result.stdout.strip().splitlines()[-1])
    wait_for(lambda: (run / "job" / "exit-code").exists(), "the detached run to end", 300)
    status = cli_subprocess("status", run, cwd=elsewhere)
    assert status.stdout.startswith(f"{run.name}: finished"), (status.stdout, (run / "job" / "output.log").read_text()
                                                              if (run / "job" / "output.log").exists() else "")
    assert_the_loss_falls(run)
