"""Every builtin model fits every builtin dataset's shape, and a dry run plans without running."""

import pytest
import torch

from runner.models import build_model
from runner.spec import ModelSpec
from tests.conftest import cli


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_builtin_models_fit_the_data(name, shape):
    model = build_model(ModelSpec(name=name), shape, 7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_resnet_stem_keeps_small_images_large():
    model = build_model(ModelSpec(name="resnet18"), (1, 28, 28), 10)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_dry_run_prints_the_plan_and_writes_nothing(write_spec, tmp_path):
    spec = write_spec(model={"name": "resnet18"},
                      data={"dataset": "fashion_mnist", "root": str(tmp_path / "nodata"), "batch_size": 8},
                      resources={"gpu": "A10G:2"})
    result = cli("submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "backend" in out and "local" in out and "A10G:2" in out
    assert "11,17" in out  # resnet18 with a 1-channel 3x3 stem: 11,170,xxx parameters
    assert "synthetic [1, 28, 28]" in out and "not on disk" in out
    assert "memory per worker" in out and "MiB" in out
    assert "nothing was submitted" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nodata").exists()


def test_dry_run_uses_real_data_when_it_is_on_disk(fashion_spec, tmp_path):
    result = cli("submit", fashion_spec(), "--dry-run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert "real (fashion_mnist found under" in result.stdout
    assert not (tmp_path / "runs").exists()
