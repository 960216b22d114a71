"""A real vast.ai run: rents the cheapest fitting instance, runs a tiny job in your pushed image,
copies the run folder back and destroys the instance. Costs a few cents. Runs only when asked:

    VAST_API_KEY=...  GPUJOB_VAST_IMAGE=docker.io/YOU/gpujob:1  uv run pytest tests/remote -s
    (optional: GPUJOB_VAST_GPU=RTX3090:1, GPUJOB_VAST_MAX_DOLLARS_PER_HOUR=0.6)

Prerequisites: the image pushed (gpujob image build --tag T --push), an ssh key on the account
(vastai create ssh-key), rsync and ssh installed here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import cli_subprocess

pytestmark = [
    pytest.mark.skipif(not os.environ.get("VAST_API_KEY"), reason="VAST_API_KEY is not set: no real vast.ai run"),
    pytest.mark.skipif(not os.environ.get("GPUJOB_VAST_IMAGE"), reason="GPUJOB_VAST_IMAGE (your pushed image) is not set"),
]


@pytest.mark.timeout(3600)
def test_a_job_runs_on_a_rented_instance_and_comes_back(write_spec, tmp_path):
    from runner.backends.vast.api import VastApi

    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "adam", "lr": 0.01}, train={"epochs": 2, "log_every_steps": 5},
                      resources={"gpu": os.environ.get("GPUJOB_VAST_GPU", "RTX3090:1"), "timeout_minutes": 15},
                      backend="vast",
                      vast={"image": os.environ["GPUJOB_VAST_IMAGE"], "disk_gb": 30,
                            "max_dollars_per_hour": float(os.environ.get("GPUJOB_VAST_MAX_DOLLARS_PER_HOUR", "0.6"))})
    dry = cli_subprocess("submit", spec, "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stderr
    out = cli_subprocess("submit", spec, "--runs-dir", tmp_path / "runs", timeout=3500)
    assert out.returncode == 0, out.stderr[-4000:]
    folder = Path(out.stdout.strip().splitlines()[-1])
    for name in ("spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "env.json").read_text())["cuda_available"] is True
    assert "destroyed instance" in out.stderr
    assert VastApi.connect().instances_labelled(f"gpujob {folder.name}") == []  # nothing left running
