"""`gpujob export kaggle`: the folder `kaggle kernels push -p OUT/` takes, and its script run
here as Kaggle would run it (output folder and installs redirected by environment variables)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import py_compile
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from runner.backends.kaggle import export as kaggle_export
from runner.backends.kaggle.export import CODE_FILE, MACHINE_SHAPE, PLACEHOLDER_USER, kernel_slug
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
    assert meta["enable_gpu"] is True and meta["is_private"] is True
    # Kaggle's image has every requirement and digits ship with scikit-learn: nothing to fetch.
    assert meta["enable_internet"] is False and "internet off" in result.stdout
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
    assert (tmp_path / "k" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("dataset", ["fashionmnist", "zalando-research/fashionmnist/v2", "owner/slug with spaces",
                                     "https://www.kaggle.com/datasets/zalando-research/fashionmnist"])
def test_a_dataset_that_is_not_owner_slug_is_exit_2_and_nothing_is_written(write_spec, tmp_path, dataset):
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "k", "--dataset", "ok-owner/ok.slug",
                 "--dataset", dataset)
    assert result.exit_code == 2, result.stdout
    assert result.stderr.strip() == (f"gpujob: --dataset {dataset}: expected OWNER/SLUG, e.g. "
                                     "zalando-research/fashionmnist")
    assert not (tmp_path / "k").exists()


def test_an_output_path_that_is_a_file_is_exit_2(write_spec, tmp_path):
    (tmp_path / "k").write_text("mine")
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "k")
    assert result.exit_code == 2 and "not an empty folder" in result.stderr
    assert (tmp_path / "k").read_text() == "mine"


def test_outside_a_gpujob_checkout_the_export_is_exit_3(write_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle_export, "PYPROJECT", tmp_path / "elsewhere" / "pyproject.toml")
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "k")
    assert result.exit_code == 3, result.stdout
    assert result.stderr.strip() == (f"gpujob: export kaggle: {tmp_path / 'elsewhere' / 'pyproject.toml'} is "
                                     "missing; run it from a gpujob checkout")
    assert not (tmp_path / "k").exists()


def test_internet_is_on_only_for_a_download_or_a_requirement_kaggles_image_lacks(write_spec, tmp_path,
                                                                                  monkeypatch):
    download = _spec(write_spec, data={"dataset": "fashion_mnist", "download": True})
    result = cli("export", "kaggle", download, tmp_path / "download")
    assert json.loads((tmp_path / "download" / "kernel-metadata.json").read_text())["enable_internet"] is True
    assert "internet on, for: data.download of fashion_mnist" in result.stdout
    attached = _spec(write_spec, data={"dataset": "fashion_mnist", "download": False, "root": "/kaggle/input/fm"})
    cli("export", "kaggle", attached, tmp_path / "attached")  # a --dataset the kernel mounts
    assert json.loads((tmp_path / "attached" / "kernel-metadata.json").read_text())["enable_internet"] is False

    monkeypatch.setitem(kaggle_export.KAGGLE_IMAGE, "typer", "0.9.0")  # an image older than typer>=0.12
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "old-image")
    assert json.loads((tmp_path / "old-image" / "kernel-metadata.json").read_text())["enable_internet"] is True
    assert "pip install typer>=0.12" in result.stdout


@pytest.fixture
def stub_pip(tmp_path):
    """A `pip` package first on PYTHONPATH: `python -m pip ...` records its arguments and installs nothing."""
    stub = tmp_path / "stub-pip"
    (stub / "pip").mkdir(parents=True)
    calls = tmp_path / "pip-calls.txt"
    record = f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    (stub / "pip" / "__main__.py").write_text(f"import sys\n{record}\n")
    return stub, calls


def test_the_script_runs_the_job_from_its_own_copy_of_gpujob(write_spec, tmp_path, stub_pip):
    cli("export", "kaggle", _spec(write_spec), tmp_path / "kernel")
    working = tmp_path / "working"
    stub, pip_calls = stub_pip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUJOB_KAGGLE_SKIP_INSTALL")}
    env.update(GPUJOB_KAGGLE_OUTPUT=str(working), PYTHONPATH=str(stub))
    out = subprocess.run([sys.executable, str(tmp_path / "kernel" / CODE_FILE)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # This venv has every requirement, as Kaggle's image does: pip is never called.
    assert "installing nothing" in out.stdout and not pip_calls.exists()
    assert "gpujob-source.zip/runner/__init__.py" in out.stdout  # not the checkout's runner/
    folder = working / "runs" / "test-job"
    for name in ARTIFACTS:
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_accuracy"] > 0.5
    assert [r["epoch"] for r in read_jsonl(folder / "metrics.jsonl") if "test_accuracy" in r] == [1, 2]
    assert not (working / "data").exists()  # datasets stay out of the kernel's output


def test_the_script_carries_the_users_own_code_and_runs_the_job_with_it(tmp_path, stub_pip):
    """The regression example: the script holds its code (the kernel sees nothing of this
    machine), unpacks it beside gpujob's source and runs the job with the user's step."""
    from tests.test_user_code import example

    spec = example(tmp_path, "regression", train={"epochs": 2})
    exported = cli("export", "kaggle", spec, tmp_path / "kernel")
    assert exported.exit_code == 0, exported.stderr
    shutil.rmtree(spec.parent)  # the kernel has only its one file
    working = tmp_path / "working"
    stub, _ = stub_pip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUJOB_KAGGLE_SKIP_INSTALL",
                                                             "GPUJOB_CODE_PATHS")}
    env.update(GPUJOB_KAGGLE_OUTPUT=str(working), PYTHONPATH=str(stub))
    out = subprocess.run([sys.executable, str(tmp_path / "kernel" / CODE_FILE)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gpujob: your code: gpujob_examples" in out.stdout
    folder = working / "runs" / "regression"
    last = [r for r in read_jsonl(folder / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert set(last["test_metrics"]) == {"mae"} and last["test_accuracy"] is None


def _load_script(path):
    loader = importlib.util.spec_from_file_location("run_gpujob", path)
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    return script


@pytest.fixture
def kernel_script(write_spec, tmp_path, monkeypatch):
    """The exported script as a module, its pip calls recorded in .commands instead of run."""
    cli("export", "kaggle", _spec(write_spec), tmp_path / "kernel")
    script = _load_script(tmp_path / "kernel" / CODE_FILE)
    script.commands = []
    script.pip_exit = 0

    def fake_run(command, **kwargs):
        script.commands.append(command)
        return subprocess.CompletedProcess(command, script.pip_exit)

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    return script


def test_the_script_carries_gpujobs_ranges_not_the_lock_pins(kernel_script):
    names = {Requirement(line).name.lower() for line in kernel_script.REQUIREMENTS}
    assert {"torch", "torchvision", "pydantic", "typer", "matplotlib", "scikit-learn", "numpy"} <= names
    assert "modal" not in names  # another backend's client: `gpujob run` never imports it
    assert not any("==" in line for line in kernel_script.REQUIREMENTS)


def test_on_kaggle_it_installs_only_what_is_missing_and_holds_the_rest(kernel_script, tmp_path):
    kernel_script.REQUIREMENTS += ["rich>=999",  # present, too old
                                   "gpujob-absent-dist>=1.0",  # absent
                                   "gpujob-windows-only>=1; sys_platform == 'win32'"]  # not for this platform
    kernel_script.install(tmp_path)
    constraints = tmp_path / "constraints.txt"
    assert kernel_script.commands == [[sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                       "--constraint", str(constraints), "rich>=999", "gpujob-absent-dist>=1.0"]]
    held = constraints.read_text().splitlines()
    # Everything else present is held at its version: Kaggle's torch and what it was built against.
    assert {f"torch=={metadata.version('torch')}", f"numpy=={metadata.version('numpy')}",
            f"pydantic=={metadata.version('pydantic')}"} <= set(held)
    assert not any(line.startswith(("rich==", "gpujob-absent-dist==")) for line in held)


def test_a_kernel_without_a_suitable_torch_stops_before_installing_one(kernel_script, tmp_path):
    kernel_script.REQUIREMENTS = ["torch>=999", "gpujob-absent-dist>=1.0"]
    with pytest.raises(SystemExit, match="lacks torch>=999; gpujob runs on the kernel's own torch"):
        kernel_script.install(tmp_path)
    assert kernel_script.commands == []


def test_a_failed_install_stops_the_kernel_saying_what_to_do(kernel_script, tmp_path):
    kernel_script.REQUIREMENTS = ["gpujob-absent-dist>=1.0"]
    kernel_script.pip_exit = 1
    with pytest.raises(SystemExit, match="set enable_internet: true in kernel-metadata.json"):
        kernel_script.install(tmp_path)


def test_bf16_is_refused_at_export_because_kaggles_cards_are_t4s(tmp_path):
    """jobs/resnet18.yaml asks for bf16 on A10Gs; Kaggle runs it on T4s, which have no bf16."""
    result = cli("export", "kaggle", "jobs/resnet18.yaml", tmp_path / "k")
    assert result.exit_code == 2, result.stdout
    assert result.stderr == ("gpujob: train.precision: bf16, but Kaggle's GPU T4 x2 runs it: T4 (compute capability "
                             "7.5) has no bf16, which needs 8.0 (Ampere) or newer; use fp16 (gpujob runs it with a "
                             "gradient scaler) or fp32, e.g. --set train.precision=fp16\n")
    assert not (tmp_path / "k").exists()
    ok = cli("export", "kaggle", "jobs/resnet18.yaml", tmp_path / "k", "--set", "train.precision=fp16")
    assert ok.exit_code == 0, ok.stderr


def _title_and_id(out):
    meta = json.loads((out / "kernel-metadata.json").read_text())
    return meta["title"], meta["id"].split("/", 1)[1]


def test_a_long_name_gets_a_title_and_slug_within_kaggles_50_characters(write_spec, tmp_path):
    """Kaggle's server refuses a kernel title over 50 characters; its CLI wants the id's slug to
    be the title's slug, and both of 5 characters or more."""
    long = "a-very-long-job-name-that-goes-well-past-fifty-chars-x"
    result = cli("export", "kaggle", _spec(write_spec), tmp_path / "k", "--set", f"name={long}",
                 "--kaggle-user", "alice")
    assert result.exit_code == 0, result.stderr
    title, slug = _title_and_id(tmp_path / "k")
    assert 5 <= len(title) <= 50 and 5 <= len(slug) <= 50 and slug == kernel_slug(title)
    assert title.startswith("gpujob a-very-long-job-name")
    said = [line for line in result.stdout.splitlines() if "50 characters" in line]
    assert said == [f"title: '{title}': `gpujob {long}` is {len(long) + 7} characters and Kaggle allows 50 characters, "
                    "so the name is cut and ends in a hash of the whole name (one name, one kernel)"]
    # predictable: the same name, the same kernel; another long name with the same start, another one
    cli("export", "kaggle", _spec(write_spec), tmp_path / "again", "--set", f"name={long}")
    cli("export", "kaggle", _spec(write_spec), tmp_path / "other", "--set", f"name={long[:-1]}y")
    assert _title_and_id(tmp_path / "again")[0] == title != _title_and_id(tmp_path / "other")[0]
    # a name that fits is left as it is, and nothing is said about it
    short = cli("export", "kaggle", _spec(write_spec), tmp_path / "short", "--set", "name=" + "b" * 43)
    assert _title_and_id(tmp_path / "short")[0] == "gpujob " + "b" * 43 and "50 characters" not in short.stdout


def _shipped_spec(out):
    import yaml

    script = _load_script(out / CODE_FILE)
    return yaml.safe_load(script.SPEC_YAML)


def test_t4_2_uses_both_of_kaggles_t4s_and_says_which_accelerator(write_spec, tmp_path, monkeypatch):
    """Kaggle's "GPU T4 x2" is machine_shape NvidiaTeslaT4 (kaggle-cli PR #1198): the spec's
    T4:2 runs two DDP workers on it, and the export says so."""
    import runner.hardware
    from runner.launching.launcher import workers_per_node
    from runner.spec.load import validate_spec

    result = cli("export", "kaggle", _spec(write_spec, resources={"gpu": "T4:2"}), tmp_path / "k")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "k" / "kernel-metadata.json").read_text())["machine_shape"] == "NvidiaTeslaT4"
    assert ("accelerator: GPU T4 x2 (machine_shape NvidiaTeslaT4): 2 DDP workers, one per T4; if the kernel's log "
            "shows other GPUs, pick GPU T4 x2 under the notebook's Settings > Accelerator") in result.stdout.splitlines()
    shipped = _shipped_spec(tmp_path / "k")
    monkeypatch.setattr(runner.hardware, "cuda_gpus", lambda: [("Tesla T4", 15.8)] * 2)  # as the kernel sees them
    assert shipped["resources"]["gpu"] == "T4:2" and workers_per_node(validate_spec(shipped)) == 2


def test_another_card_or_one_gpu_runs_on_kaggles_t4s_and_says_so(write_spec, tmp_path):
    result = cli("export", "kaggle", _spec(write_spec, resources={"gpu": "A10G:2"}), tmp_path / "a10g")
    assert result.exit_code == 0, result.stderr
    assert _shipped_spec(tmp_path / "a10g")["resources"]["gpu"] == "T4:2"  # the run's spec.yaml says what ran it
    assert "2 DDP workers, one per T4 (resources.gpu A10G:2 becomes T4:2: Kaggle's cards are T4s)" in result.stdout
    one = cli("export", "kaggle", _spec(write_spec, resources={"gpu": "T4"}), tmp_path / "one")
    assert "accelerator: GPU T4 x2 (machine_shape NvidiaTeslaT4): 1 worker on one of its 2 T4s (resources.gpu " \
           "T4:2 uses both)" in one.stdout
    assert _shipped_spec(tmp_path / "one")["resources"]["gpu"] == "T4:1"
    cpu = cli("export", "kaggle", _spec(write_spec, resources={}), tmp_path / "cpu")
    assert _shipped_spec(tmp_path / "cpu")["resources"]["gpu"] == "T4:1" and "1 worker on one of its 2 T4s" in cpu.stdout


def test_more_gpus_than_kaggle_gives_is_exit_2_and_nothing_is_written(write_spec, tmp_path):
    result = cli("export", "kaggle", _spec(write_spec, resources={"gpu": "T4:4"}), tmp_path / "k")
    assert result.exit_code == 2, result.stdout
    assert result.stderr == ("gpujob: resources.gpu: T4:4 asks for 4 GPUs; Kaggle's largest GPU accelerator, GPU T4 "
                             "x2, has 2: ask for T4:2 (e.g. --set resources.gpu=T4:2)\n")
    assert not (tmp_path / "k").exists()
