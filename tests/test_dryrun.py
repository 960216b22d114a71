"""`--dry-run` says "ready" only for a job that will start: what would stop the real run is
found here, with the real run's one line and exit code, and every figure says how it was got."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import REPO, cli_subprocess


def rows(stdout: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in stdout.splitlines() if re.search(r"\S\s{2,}\S", line))


def dry(*args, **env):
    return cli_subprocess("submit", *args, "--dry-run", env=env or None)


def test_a_dry_run_prints_the_plan_and_writes_nothing(write_spec, tmp_path, answering_data_source):
    spec = write_spec(model={"name": "resnet18"},
                      data={"dataset": "fashion_mnist", "root": str(tmp_path / "nodata"), "batch_size": 8},
                      resources={"gpu": "A10G:2"}, backend="local")
    out = dry(spec, "--runs-dir", tmp_path / "runs", **answering_data_source)
    assert out.returncode == 0, out.stderr
    got = rows(out.stdout)
    assert got["backend"] == "local" and got["gpu"] == "A10G:2" and got["model"].startswith("resnet18: 11,17")
    assert got["data"] == "random stand-in of [1, 28, 28]: fashion_mnist is not under " + str(tmp_path / "nodata") + \
        " yet: the job downloads it"
    assert "scaled by batch size" in got["dry steps"] and "counted from the model's shapes" in got["memory per worker"]
    assert got["note"].startswith("no CUDA GPU here: resources.gpu A10G:2 is ignored")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nodata").exists()


def test_the_data_line_says_where_the_data_is(fashion_spec, write_spec, tmp_path):
    got = rows(dry(fashion_spec(), "--runs-dir", tmp_path / "runs").stdout)
    assert got["data"].startswith("fashion_mnist, found under ")
    digits = rows(dry(write_spec(), "--runs-dir", tmp_path / "runs").stdout)  # ./data does not exist here
    assert digits["data"] == "digits (scikit-learn's bundled 8x8 digits; no download)"
    synthetic = rows(dry(write_spec(data={"dataset": "synthetic"}), "--runs-dir", tmp_path / "runs").stdout)
    assert synthetic["data"] == "synthetic [1, 28, 28] (made by the job itself)"


# ---- approved, then failed for real: now refused here, as the run would ----------------------


def _same_line(dry_out, run_out):
    assert dry_out.returncode == run_out.returncode == 2, (dry_out.stderr, run_out.stderr)
    assert dry_out.stderr.strip().splitlines()[-1] == run_out.stderr.strip().splitlines()[-1]


def test_fp16_where_the_job_runs_on_a_cpu(write_spec, tmp_path):
    spec = write_spec(train={"precision": "fp16"})
    _same_line(dry(spec, "--runs-dir", tmp_path / "r"), cli_subprocess("submit", spec, "--runs-dir", tmp_path / "r"))
    assert "fp16 needs a CUDA or MPS GPU" in dry(spec).stderr


def test_bf16_on_a_card_without_it_is_found_from_the_catalog(write_spec, tmp_path):
    spec = write_spec(train={"precision": "bf16"}, resources={"gpu": "T4:1"}, backend="modal")
    out = dry(spec)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"gpujob: {spec}:3: train.precision: bf16, but resources.gpu T4 (compute capability 7.5) has no bf16, which "
        "needs 8.0 (Ampere) or newer; use fp16 (gpujob runs it with a gradient scaler) or fp32")
    ok = dry(write_spec(train={"precision": "fp16"}, resources={"gpu": "T4:1"}, backend="modal"))
    assert ok.returncode == 0, ok.stderr  # fp16 is what a T4 does


def test_data_that_is_neither_here_nor_downloaded(write_spec, tmp_path):
    spec = write_spec(data={"dataset": "fashion_mnist", "root": str(tmp_path / "none"), "download": False})
    _same_line(dry(spec, "--runs-dir", tmp_path / "r"), cli_subprocess("submit", spec, "--runs-dir", tmp_path / "r"))
    remote = dry(write_spec(data={"dataset": "fashion_mnist", "download": False}, resources={"gpu": "A10G:1"}))
    assert remote.returncode == 2 and "nothing puts fashion_mnist on modal's machine" in remote.stderr


def test_a_runs_dir_that_cannot_be_written(write_spec, tmp_path):
    (tmp_path / "afile").write_text("x")
    spec = write_spec()
    out = dry(spec, "--runs-dir", tmp_path / "afile" / "runs")
    assert out.returncode == 2 and "--runs-dir" in out.stderr and "is a file" in out.stderr


def test_a_batch_that_does_not_split_over_the_workers_is_found_by_validate(write_spec):
    spec = write_spec(data={"dataset": "digits", "batch_size": 10}, resources={"processes": 3})
    out = cli_subprocess("validate", spec)
    assert out.returncode == 2 and "data.batch_size: 10 does not split evenly over 3 workers" in out.stderr
    assert dry(spec).stderr == out.stderr  # and the dry run says the same, never "3 per worker"


def test_a_factory_dataset_without_a_class_count(write_spec):
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.plugins:unlabelled_blobs", "num_workers": 0})
    out = dry(spec)
    assert out.returncode == 2 and "model.num_classes" in out.stderr and "Traceback" not in out.stderr


def test_a_factory_model_whose_signature_does_not_match_is_one_line(write_spec):
    out = dry(write_spec(model={"name": "tests.plugins:tiny_mlp", "args": {"width": 3}}))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("gpujob: model.args: tests.plugins:tiny_mlp cannot be called with")


def test_labels_past_num_classes_are_one_line(write_spec):
    out = dry(write_spec(model={"num_classes": 4}))
    assert out.returncode == 2 and "model.num_classes: 4, but the data has label" in out.stderr


# ---- does it fit? ------------------------------------------------------------------------


def test_a_job_too_big_for_the_requested_card_is_refused_with_the_numbers(write_spec):
    spec = write_spec(model={"name": "resnet50"}, data={"dataset": "fashion_mnist", "batch_size": 1024},
                      resources={"gpu": "T4:1"})
    out = dry(spec)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    line = out.stderr
    assert "data.batch_size: 1024 needs ~" in line and "T4 (16 GB) on modal has 14.9 GiB per worker" in line
    fits = int(re.search(r"data.batch_size (\d+) or less fits", line)[1])
    assert 0 < fits < 1024 and "or a card with more memory (" in line
    assert dry(spec, "--set", f"data.batch_size={fits}").returncode == 0  # what it suggests does fit


@pytest.mark.parametrize("overrides", [["data.batch_size=1000000000"],
                                       ["data.dataset=synthetic", "data.synthetic.shape=[3,10000,10000]",
                                        "data.batch_size=2"]])
def test_a_job_too_big_for_this_machine_is_refused_from_its_sizes(write_spec, overrides):
    started = time.monotonic()
    sets = [arg for o in overrides for arg in ("--set", o)]
    out = dry(write_spec(model={"name": "cnn"}, backend="local"), *sets)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "but this machine has" in out.stderr and time.monotonic() - started < 60


# ---- what the dry run prints is what is sent ---------------------------------------------


def test_the_docker_dry_run_prints_the_command_that_will_run(write_spec, tmp_path, fake_docker_engine):
    out = cli_subprocess("submit", write_spec(), "--backend", "docker", "--gpu", "2", "--dry-run",
                         "--runs-dir", tmp_path / "runs", env=fake_docker_engine)
    assert out.returncode == 0, out.stderr
    got = rows(out.stdout)
    assert "DATE-TIME" not in out.stdout and "<spec folder>" not in out.stdout
    run = got["run folder"]
    assert f"--name gpujob-{run.split('/')[-1]}" in got["command"] and f"{run}/job:/job:ro" in got["command"]
    assert got["world size"] == "1" and "NVIDIA's container runtime is not installed here" in got["note"]


@pytest.fixture
def fake_docker_engine(tmp_path):
    """A `docker` on PATH that answers `info` and `image inspect` as an engine without NVIDIA would."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\ncase "$1" in info) echo "{}"; exit 0;; image) exit 0;; *) exit 1;; esac\n')
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_every_shipped_job_passes_its_dry_run(tmp_path, answering_data_source):
    # Where a job downloads its data, the dry run asks the source: here a local stand-in answers.
    for job in sorted((REPO / "jobs").glob("*.yaml")):
        out = cli_subprocess("submit", job, "--dry-run", "--runs-dir", tmp_path / "runs", timeout=120,
                             env=answering_data_source)
        assert out.returncode == 0, (job.name, out.stderr)


def test_the_dry_run_of_modal_states_the_most_it_can_cost(write_spec):
    got = rows(dry(write_spec(resources={"gpu": "A10G:1", "timeout_minutes": 30}), "--backend", "modal").stdout)
    assert "per attempt" not in got["cost"] and "at most $1.28 for the whole job" in got["cost"]
