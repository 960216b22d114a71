"""Models by name: the seeds' SimpleNN (mlp), a small CNN, torchvision ResNets adapted
to small images, or a user's `package.module:factory`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.errors import bad_input
from runner.usercode.imports import call_factory, import_factory

if TYPE_CHECKING:
    from torch import nn

    from runner.spec.model import ModelSpec


def build_model(spec: "ModelSpec", shape: tuple[int, int, int], num_classes: int | None) -> "nn.Module":
    """The spec's model. num_classes is None where neither the spec nor a factory dataset gives it
    (a user's step needs none): a factory model is told so, a builtin one cannot be built."""
    if ":" in spec.name:
        factory = import_factory(spec.name, "model.name")
        return call_factory(factory, spec.name, "model.args", num_classes=num_classes, input_shape=tuple(shape),
                            **spec.args)
    if num_classes is None:
        raise bad_input(f"model.num_classes: the builtin model {spec.name} needs it (its last layer has one output "
                        "per class); give it, or a dataset with a num_classes attribute")
    if spec.name == "mlp":
        return simple_nn(shape, num_classes)
    if spec.name == "cnn":
        return small_cnn(shape, num_classes)
    return small_image_resnet(spec.name, shape, num_classes)


def simple_nn(shape, num_classes: int) -> "nn.Module":
    """The seeds' SimpleNN: flatten, 784-128 ReLU, 128-10 (sizes follow the dataset)."""
    from torch import nn

    channels, height, width = shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(channels * height * width, 128), nn.ReLU(), nn.Linear(128, num_classes)
    )


def small_cnn(shape, num_classes: int) -> "nn.Module":
    from torch import nn

    channels = shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def small_image_resnet(name: str, shape, num_classes: int) -> "nn.Module":
    """torchvision's ResNet with its stem fitted to the data: the ImageNet stem (7x7
    stride 2 then max-pool) would shrink a 28x28 image to 7x7 before the first block."""
    from torch import nn
    from torchvision import models

    model = getattr(models, name)(weights=None, num_classes=num_classes)
    channels, height, _ = shape
    if height <= 64:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def parameter_count(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())
