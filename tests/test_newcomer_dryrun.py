"""What a newcomer meets (issue 29): a dry run and an estimate for any batch the README promises
(dicts, int token ids, several inputs), and for their own dataset."""

from __future__ import annotations

from tests.conftest import REPO, cli_subprocess

TEXT = dict(model={"name": "tests.newcomer_plugins:bag_of_words"},
            data={"dataset": "tests.newcomer_plugins:tokens", "batch_size": 32, "num_workers": 0},
            train={"epochs": 2})
PAIRS = dict(model={"name": "tests.newcomer_plugins:two_inputs"},
             data={"dataset": "tests.newcomer_plugins:pairs", "batch_size": 32, "num_workers": 0},
             train={"epochs": 2, "step": "tests.newcomer_plugins:pairs_step"})


def _rows(stdout: str) -> dict[str, str]:
    return {line[:18].strip(): line[18:].strip() for line in stdout.splitlines() if line[:18].strip()}


def test_the_dry_run_of_a_text_model_over_int_token_ids_uses_a_real_batch(write_spec):
    """It fed torch.zeros into nn.EmbeddingBag and ended in a 100-line traceback."""
    out = cli_subprocess("submit", write_spec(**TEXT), "--dry-run")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = _rows(out.stdout)
    assert "counted from the model's shapes" in rows["memory per worker"] and "s per epoch" in rows["estimate"]


def test_the_dry_run_of_a_two_input_model_with_its_own_step_and_a_dict_batch(write_spec):
    out = cli_subprocess("submit", write_spec(**PAIRS), "--dry-run")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "s per epoch" in _rows(out.stdout)["estimate"]


def test_a_rented_dry_run_estimates_time_and_dollars_for_the_users_own_data(write_spec):
    out = cli_subprocess("submit", write_spec(**TEXT), "--dry-run", "--backend", "modal", "--gpu", "A10G")
    assert out.returncode == 0, out.stderr
    estimate = _rows(out.stdout)["estimate"]
    assert "on A10G x1, about $" in estimate, estimate


def test_estimate_prices_the_readmes_own_regression_example():
    """`gpujob plan jobs/regression.yaml` said its size is known only once it loads."""
    out = cli_subprocess("estimate", REPO / "jobs" / "regression.yaml", "--gpus", "T4,A10G")
    assert out.returncode == 0, out.stderr
    assert "cheapest: T4 x1" in out.stdout and "epoch(s) of " in out.stdout


def _unreachable_mirrors(monkeypatch):
    """FashionMNIST's download source, pointed at a local port nothing listens on: no answer,
    whether or not this machine reaches the internet."""
    import socket

    from torchvision import datasets

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{port}/"])


def test_a_dry_run_that_would_download_checks_the_source_answers(write_spec, tmp_path, monkeypatch):
    """It said "the job downloads it" on a machine that cannot; the real run then failed."""
    from tests.conftest import cli

    _unreachable_mirrors(monkeypatch)
    spec = write_spec(data={"dataset": "fashion_mnist", "root": str(tmp_path / "data"), "download": True})
    out = cli("submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert out.exit_code == 2 and "data.download: fashion_mnist is not under" in out.stderr, out.stderr
    assert "its source does not answer from here" in out.stderr and "FashionMNIST/raw" in out.stderr
    assert not (tmp_path / "data").exists()


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    """It left an empty data/FashionMNIST/raw behind."""
    import pytest

    from runner.errors import GpujobError
    from runner.spec.model import DataSpec
    from runner.training.datasets import load_image_tensors

    _unreachable_mirrors(monkeypatch)
    data = DataSpec(dataset="fashion_mnist", root=str(tmp_path / "data"), download=True)
    with pytest.raises(GpujobError) as err:
        load_image_tensors(data, train=True)
    assert err.value.exit_code == 2 and "data.download" in err.value.message
    assert not (tmp_path / "data").exists()


def _estimate_row(out) -> str:
    return next(line for line in out.stdout.splitlines() if line.startswith("estimate"))


def test_the_cpu_estimate_says_when_a_busy_machine_makes_it_unreliable(write_spec, tmp_path, monkeypatch):
    """It said ~24.7 s per epoch at load 3-8 for a job that took 0.24-1.58 s, and did not say so."""
    import os

    from tests.conftest import cli

    spec = write_spec(train={"epochs": 1})
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * cores, 4.0 * cores, 4.0 * cores))
    busy = cli("submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert busy.exit_code == 0, busy.stderr
    row = _estimate_row(busy)
    assert f"UNRELIABLE: this machine is busy (load {4.0 * cores:.1f} on {cores} core(s))" in row, row
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    quiet = cli("submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert "busy" not in _estimate_row(quiet)
