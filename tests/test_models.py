"""Every builtin model fits every builtin dataset's shape, and a dry run plans without running."""

import pytest
import torch

from runner.errors import GpujobError
from runner.training.models import build_model
from runner.spec.model import ModelSpec


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_builtin_models_fit_the_data(name, shape):
    model = build_model(ModelSpec(name=name), shape, 7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_a_builtin_model_without_classes_names_the_field():
    # a factory dataset without num_classes, trained by a user's step, leaves the class count unknown
    with pytest.raises(GpujobError) as refused:
        build_model(ModelSpec(name="mlp"), (1, 8, 8), None)
    assert refused.value.exit_code == 2 and refused.value.message.startswith("model.num_classes:")


def test_resnet_stem_keeps_small_images_large():
    model = build_model(ModelSpec(name="resnet18"), (1, 28, 28), 10)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
