"""Real jobs on Modal: the image is built (the first time takes several minutes), a 1-epoch job
trains on a rented GPU and its run folder comes back. Costs about a cent. Runs only when asked:

    MODAL_TOKEN_ID=... MODAL_TOKEN_SECRET=... uv run --group dev pytest tests/remote/test_modal_remote.py -s
    (optional: GPUJOB_MODAL_GPU=A10G:2 for the two-GPU DDP path; the default is T4:1)

With a token in ~/.modal.toml instead (`modal token new`), export MODAL_TOKEN_ID=... anyway or
the tests skip: they read it to check that no run file ever contains it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import cli_subprocess

pytestmark = pytest.mark.skipif(
    not os.environ.get("MODAL_TOKEN_ID"),
    reason="MODAL_TOKEN_ID is not set: no real Modal run; set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET to run")

GPU = os.environ.get("GPUJOB_MODAL_GPU", "T4:1")
ARTIFACTS = ("spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json", ".modal.json")


def _spec(write_spec):
    return write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "adam", "lr": 0.01}, train={"epochs": 1, "log_every_steps": 5},
                      resources={"gpu": GPU, "timeout_minutes": 15}, backend="modal")


def _check_run(run: Path) -> None:
    assert all((run / name).is_file() for name in ARTIFACTS), sorted(p.name for p in run.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["world_size"] == int(GPU.split(":")[1])
    assert summary["test_accuracy"] > 0.5
    secrets = [os.environ[k] for k in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET") if os.environ.get(k)]
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), f"a token is in {path}"


@pytest.mark.timeout(3600)
def test_a_job_runs_on_modal_and_its_folder_comes_back(write_spec, tmp_path):
    spec = _spec(write_spec)
    dry = cli_subprocess("submit", spec, "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stderr
    out = cli_subprocess("submit", spec, "--runs-dir", tmp_path / "runs", timeout=3500)
    assert out.returncode == 0, out.stderr[-4000:]
    run = Path(out.stdout.strip().splitlines()[-1])
    _check_run(run)
    assert "training on cuda" in out.stdout + out.stderr  # the job's own progress reached this terminal


@pytest.mark.timeout(3600)
def test_a_detached_job_is_followed_and_fetched_later(write_spec, tmp_path):
    out = cli_subprocess("submit", _spec(write_spec), "--detach", "--runs-dir", tmp_path / "runs", timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    run = Path(out.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 1800
    while True:
        status = cli_subprocess("status", run, timeout=120)
        assert status.returncode == 0, status.stderr
        if "running" not in status.stdout:
            break
        assert time.monotonic() < deadline, "still running after 30 minutes"
        time.sleep(15)
    assert f"{run.name}: finished" in status.stdout, status.stdout
    fetched = cli_subprocess("fetch", run, timeout=600)
    assert fetched.returncode == 0, fetched.stderr
    _check_run(run)
