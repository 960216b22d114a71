"""An autoencoder on the 8x8 digits: no labels used, the loss is how well the image comes back
through a 16-number bottleneck."""

from torch import nn
from torch.nn import functional as F


def model(num_classes, input_shape, bottleneck: int = 16):
    channels, height, width = input_shape
    pixels = channels * height * width
    return nn.Sequential(
        nn.Flatten(), nn.Linear(pixels, 128), nn.ReLU(), nn.Linear(128, bottleneck), nn.ReLU(),
        nn.Linear(bottleneck, 128), nn.ReLU(), nn.Linear(128, pixels), nn.Unflatten(1, (channels, height, width)))


def step(model, batch):
    """Reconstruction error of the (normalised) images; the labels are ignored."""
    images, _labels = batch
    return F.mse_loss(model(images), images)
