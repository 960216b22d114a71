"""Credentials never leave the environment they were given in: with fake Modal, vast.ai and
Kaggle credentials set, every backend's run folder, logs and records, the Kaggle bundle, and the
Docker image and its history are searched for them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_subprocess
from tests.conftest import TAG
from tests.test_docker import needs_engine

SECRETS = {"MODAL_TOKEN_ID": "ak-fake-id-4f1d9", "MODAL_TOKEN_SECRET": "as-fake-secret-7c2e0",
           "VAST_API_KEY": "vast-fake-key-91b3a", "KAGGLE_USERNAME": "kaggle-fake-user-5d7",
           "KAGGLE_KEY": "kaggle-fake-key-0a8e4"}


def _leaks(root: Path) -> list[str]:
    """Every file under root that holds one of the secrets, with the secret's name."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    return found


@pytest.fixture
def job(write_spec):
    return write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      train={"epochs": 1, "max_steps": 6, "log_every_steps": 2})


def test_a_local_run_keeps_no_credential(job, tmp_path):
    runs = tmp_path / "runs"
    out = cli_subprocess("submit", job, "--runs-dir", runs, env=SECRETS)
    assert out.returncode == 0, out.stderr
    detached = cli_subprocess("submit", job, "--runs-dir", runs, "--detach", env=SECRETS)
    assert detached.returncode == 0, detached.stderr
    run = Path(detached.stdout.strip().splitlines()[-1])
    assert cli_subprocess("logs", run, "--follow", env=SECRETS).returncode == 0
    assert _leaks(runs) == [] and not any(v in out.stdout + out.stderr for v in SECRETS.values())


def test_the_kaggle_bundle_keeps_no_credential(job, tmp_path):
    out = cli_subprocess("export", "kaggle", job, tmp_path / "bundle", env=SECRETS)
    assert out.returncode == 0, out.stderr
    metadata = json.loads((tmp_path / "bundle" / "kernel-metadata.json").read_text())
    assert metadata["id"].startswith("kaggle-fake-user-5d7/")  # the user name is the id, by design
    leaks = [leak for leak in _leaks(tmp_path / "bundle") if not leak.endswith("KAGGLE_USERNAME")]
    assert leaks == []


def test_modal_and_vast_runs_keep_no_credential(job, tmp_path, monkeypatch, use_backend):
    """Through the stand-ins (the real function and the real start script), with the secrets in
    this process's environment, as a user's shell would have them."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    from runner.backends.modal.app import VOLUME_PATH_ENV
    from runner.backends.modal.service import ModalService
    from tests.conftest import cli
    from tests.modal_standin import ContainerModal
    from tests.test_vast import GOOD
    from tests.vast_standin import LocalVast

    monkeypatch.setenv(VOLUME_PATH_ENV, str(tmp_path / "volume"))
    modal_service = ContainerModal(tmp_path / "volume", tmp_path / "calls")
    use_backend("modal", connect=lambda: ModalService(modal_service))
    vast = LocalVast(tmp_path / "vast", GOOD)
    use_backend("vast", connect=lambda: vast, poll_s=0.2)
    spec = job.read_text()
    (tmp_path / "modal.yaml").write_text(spec + "backend: modal\nresources: {gpu: 'A10G:1'}\n")
    (tmp_path / "vast.yaml").write_text(spec + "backend: vast\nresources: {gpu: 'A10G:2'}\n"
                                               "vast: {image: docker.io/me/gpujob:1}\n")
    for name in ("modal", "vast"):
        result = cli("submit", tmp_path / f"{name}.yaml", "--runs-dir", tmp_path / "runs")
        assert result.exit_code == 0, result.stderr
        assert not any(v in result.stdout + result.stderr for v in SECRETS.values())
    assert _leaks(tmp_path) == []  # run folders, the volume, the instances' disks, the calls' logs


@needs_engine
def test_the_docker_image_and_a_container_run_keep_no_credential(job, tmp_path, image):
    spec = tmp_path / "docker.yaml"
    spec.write_text(job.read_text() + f"docker: {{image: '{TAG}'}}\n")
    out = cli_subprocess("submit", spec, "--backend", "docker", "--runs-dir", tmp_path / "runs", env=SECRETS)
    assert out.returncode == 0, out.stderr
    assert _leaks(tmp_path / "runs") == []
    history = subprocess.run(["docker", "history", "--no-trunc", TAG], capture_output=True, text=True).stdout
    config = subprocess.run(["docker", "image", "inspect", TAG], capture_output=True, text=True).stdout
    assert not any(v in history + config for v in SECRETS.values())
    env_arg = [a for a in json.loads((next((tmp_path / "runs").iterdir()) / "job" / "request.json")
                                     .read_text())["argv"] if a.startswith(tuple(SECRETS))]
    assert env_arg == []  # the container is never handed the user's credentials
