"""`gpujob export kaggle`: the folder `kaggle kernels push -p OUT/` takes, and its script run
here as Kaggle would run it (output folder and installs redirected by environment variables)."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys

from runner.kaggle_export import CODE_FILE, MACHINE_SHAPE, PLACEHOLDER_USER, kernel_slug
from tests.conftest import cli, read_jsonl

ARTIFACTS = ("spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json", "model.pt")


def _spec(write_spec, **overrides):
    sections = dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                    optimizer={"name": "adam", "lr": 0.01}, train={"epochs": 2, "log_every_steps": 5},
                    resources={"gpu": "T4:2"})
    sections.update(overrides)
    return write_spec(**sections)


def test_the_folder_has_what_kaggle_kernels_push_checks(write_spec, tmp_path):
    out = tmp_path / "kernel"
    result = cli("export", "kaggle", _spec(write_spec), out, "--kaggle-user", "alice",
                 "--dataset", "zalando-research/fashionmnist")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["kernel-metadata.json", CODE_FILE]
    meta = json.loads((out / "kernel-metadata.json").read_text())
    # What `kaggle kernels push` validates: a title of 5+ characters whose slug is the id's,
    # an existing code_file, a known language and kernel type.
    assert len(meta["title"]) >= 5 and meta["id"] == f"alice/{kernel_slug(meta['title'])}" == "alice/gpujob-test-job"
    assert (out / meta["code_file"]).is_file() and meta["language"] == "python" and meta["kernel_type"] == "script"
    assert meta["enable_gpu"] is True and meta["enable_internet"] is True and meta["is_private"] is True
    assert meta["machine_shape"] == MACHINE_SHAPE and meta["dataset_sources"] == ["zalando-research/fashionmnist"]
    py_compile.compile(str(out / CODE_FILE), doraise=True)
    assert "kaggle kernels push -p" in result.stdout and "alice/gpujob-test-job" in result.stdout


def test_without_a_username_the_id_is_a_placeholder_and_the_message_says_so(write_spec, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "k")
    meta = json.loads((tmp_path / "k" / "kernel-metadata.json").read_text())
    assert meta["id"].startswith(f"{PLACEHOLDER_USER}/") and PLACEHOLDER_USER in result.stdout
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    cli("export", "kaggle", _spec(write_spec), tmp_path / "k2")
    assert json.loads((tmp_path / "k2" / "kernel-metadata.json").read_text())["id"].startswith("bob/")


def test_a_non_empty_folder_is_never_overwritten(write_spec, tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "notes.txt").write_text("mine")
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "k")
    assert result.exit_code == 2 and "never overwrites" in result.stderr
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["notes.txt"]


def test_the_script_runs_the_job_from_its_own_copy_of_gpujob(write_spec, tmp_path):
    cli("export", "kaggle", _spec(write_spec), tmp_path / "kernel")
    working = tmp_path / "working"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GPUJOB_KAGGLE_OUTPUT=str(working), GPUJOB_KAGGLE_SKIP_INSTALL="1")
    out = subprocess.run([sys.executable, str(tmp_path / "kernel" / CODE_FILE)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gpujob-source.zip/runner/__init__.py" in out.stdout  # not the checkout's runner/
    folder = working / "runs" / "test-job"
    for name in ARTIFACTS:
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_accuracy"] > 0.5
    assert [r["epoch"] for r in read_jsonl(folder / "metrics.jsonl") if "test_accuracy" in r] == [1, 2]
    assert not (working / "data").exists()  # datasets stay out of the kernel's output


def test_on_kaggle_it_installs_the_pinned_requirements_but_not_the_torch_stack(write_spec, tmp_path, monkeypatch):
    cli("export", "kaggle", _spec(write_spec), tmp_path / "kernel")
    loader = importlib.util.spec_from_file_location("run_gpujob", tmp_path / "kernel" / CODE_FILE)
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    commands = []
    monkeypatch.setattr(script.subprocess, "run", lambda command, **kw: commands.append(command))
    script.install(tmp_path)
    assert commands == [[sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                         "--requirement", str(tmp_path / "requirements.txt")]]
    pinned = (tmp_path / "requirements.txt").read_text().splitlines()
    names = {line.split("==")[0] for line in pinned}
    assert {"pydantic", "typer", "matplotlib", "scikit-learn"} <= names
    assert not names & {"torch", "torchvision", "triton"} and not any(n.startswith(("nvidia-", "cuda-")) for n in names)
    assert all("==" in line for line in pinned)
