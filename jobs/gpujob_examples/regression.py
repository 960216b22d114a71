"""Regression on scikit-learn's bundled diabetes data (442 patients, 10 features; no download):
a small MLP, mean squared error as the loss, mean absolute error reported beside it."""

import torch
from torch import nn
from torch.nn import functional as F


def dataset(train: bool, root: str, test_fraction: float = 0.2, seed: int = 0):
    """The train or test split, features and target standardised with the training split's
    statistics (so the loss starts near 1 and its scale means something)."""
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(target, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(len(x) * (1 - test_fraction))
    fit = order[:cut]
    x = (x - x[fit].mean(0)) / x[fit].std(0)
    y = (y - y[fit].mean()) / y[fit].std()
    chosen = fit if train else order[cut:]
    return torch.utils.data.TensorDataset(x[chosen], y[chosen])


def model(num_classes, input_shape, hidden: int = 64):
    """An MLP from the features to one number (num_classes is not used: this is regression)."""
    (features,) = input_shape
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def step(model, batch):
    """The loss to minimise, and the values to average and report with it."""
    x, y = batch
    predicted = model(x).squeeze(1)
    return F.mse_loss(predicted, y), {"mae": (predicted - y).abs().mean()}
