"""FashionMNIST-format IDX files made on the spot, for tests and benchmarks on machines
that cannot download the real ones. The files have the real names, layout and sizes
(torchvision's own reader loads them); the pixels are class prototypes plus noise, so a
model can learn them and a loss curve goes down."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, train_samples: int = 2000, test_samples: int = 500, seed: int = 0,
                        folder: str = "FashionMNIST") -> Path:
    """Write root/FashionMNIST/raw/*-ubyte as torchvision expects; returns root."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(10, 28, 28))
    for train, n in ((True, train_samples), (False, test_samples)):
        labels = rng.integers(0, 10, size=n)
        images = np.clip(prototypes[labels] + rng.normal(0, 90, size=(n, 28, 28)), 0, 255)
        image_file, label_file = FILES[train]
        write_idx_images(raw / image_file, images)
        write_idx_labels(raw / label_file, labels)
    return Path(root)
