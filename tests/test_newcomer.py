"""What a newcomer trips on, tried as one would type it: installing the command for use
anywhere, their own code beside their spec, opening a checkpoint, reading the help, the last
line of every outcome."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import torch

from tests.conftest import REPO, cli_subprocess


def test_the_command_installs_for_use_anywhere(tmp_path):
    """README: `uv tool install --editable .` in the checkout puts `gpujob` on PATH for every folder."""
    uv = shutil.which("uv")
    assert uv, "uv is what the README installs gpujob with"
    env = {**os.environ, "UV_TOOL_DIR": str(tmp_path / "tools"), "UV_TOOL_BIN_DIR": str(tmp_path / "bin")}
    installed = subprocess.run([uv, "tool", "install", "--editable", str(REPO)], env=env, capture_output=True,
                               text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gpujob = str(tmp_path / "bin" / "gpujob")
    version = subprocess.run([gpujob, "--version"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("gpujob ")
    spec = elsewhere / "mine.yaml"
    spec.write_text("name: mine\nmodel: {name: mlp}\ntrain: {epochs: 1, max_steps: 5}\n")
    ran = subprocess.run([gpujob, "submit", "mine.yaml"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert Path(ran.stdout.strip().splitlines()[-1]).parent == Path("runs")  # runs/ where you are
    assert (elsewhere / "runs").is_dir()


def test_a_factory_beside_the_spec_needs_no_pythonpath(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mymodels.py").write_text(
        "from torch import nn\n\n"
        "def wide(num_classes, input_shape):\n"
        "    c, h, w = input_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 64), nn.ReLU(), nn.Linear(64, num_classes))\n")
    (project / "job.yaml").write_text("name: own\nmodel: {name: 'mymodels:wide'}\ntrain: {epochs: 1, max_steps: 5}\n")
    other = tmp_path / "other"
    other.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for nproc in ("1", "2"):  # in this process, and in workers the launcher starts
        out = subprocess.run([str(Path(os.sys.executable)), "-m", "runner.cli", "run", str(project / "job.yaml"),
                              "--nproc-per-node", nproc, "--runs-dir", str(tmp_path / f"runs{nproc}")],
                             cwd=other, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr


def test_a_checkpoint_opens_with_torch_load(tmp_path, write_spec):
    run = tmp_path / "run"
    assert cli_subprocess("run", write_spec(train={"epochs": 1, "max_steps": 4}), "--run-dir", run).returncode == 0
    (checkpoint,) = sorted((run / "checkpoints").glob("step-*.pt"))[-1:]
    state = torch.load(checkpoint, weights_only=False)  # the README's one line
    assert set(state) >= {"model", "optimizer", "loop"} and state["loop"]["step"] == 4
    import hashlib

    digest = checkpoint.with_name(checkpoint.name + ".sha256").read_text().strip()
    assert digest == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_the_last_line_is_the_run_folder_when_a_job_fails(write_spec, tmp_path):
    spec = write_spec(optimizer={"name": "sgd", "lr": 1e12},
                      train={"epochs": 2, "log_every_steps": 1, "checkpoint_every_minutes": 0})
    out = cli_subprocess("submit", spec, "--runs-dir", tmp_path / "runs")
    assert out.returncode == 1 and "nan" in out.stderr.lower()
    (run,) = (tmp_path / "runs").iterdir()
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "runs" / run.name)
    assert (run / "error.log").exists()


def test_help_shows_no_type_tags():
    for command in ([], ["submit"], ["run"], ["resume"], ["export", "kaggle"]):
        out = cli_subprocess(*command, "--help")
        assert out.returncode == 0
        options = out.stdout.split("Options:")[-1]  # an argument's line may say what it takes (<path>)
        assert not any(tag in options for tag in ("<bool>", "<str>", "<list[str]>", "<int>")), out.stdout


def test_push_with_a_bare_tag_is_refused_before_any_build(tmp_path):
    started = time.monotonic()
    out = cli_subprocess("image", "build", "--tag", "gpujob:mine", "--push")
    assert out.returncode == 2 and "--push: gpujob:mine names no registry" in out.stderr
    assert time.monotonic() - started < 30
