"""Datasets: what each one is (shape, classes, normalisation) and how to load it.

Small image datasets are decoded once into one uint8 tensor (`ImageTensors`) so the
training loop can batch them by index on the device (see batches.py). Datasets given as
`package.module:factory` stay ordinary torch Datasets and go through a DataLoader.
"""

from __future__ import annotations

import importlib
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import bad_input

if TYPE_CHECKING:
    import torch

    from runner.spec.model import DataSpec


@dataclass(frozen=True)
class DatasetInfo:
    shape: tuple[int, int, int]  # channels, height, width
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    samples: int = 0  # train and test together: each worker holds them all, as uint8
    test_samples: int = 0

    @property
    def train_samples(self) -> int:
        return self.samples - self.test_samples

    @property
    def held_bytes(self) -> int:
        """What each worker keeps of the dataset (runner/batches.py TensorBatches: uint8 on its device)."""
        c, h, w = self.shape
        return self.samples * c * h * w


@dataclass
class ImageTensors:
    """A whole split as uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: "torch.Tensor"
    labels: "torch.Tensor"

    def __len__(self) -> int:
        return len(self.labels)


BUILTIN_INFO = {
    "fashion_mnist": DatasetInfo((1, 28, 28), 10, (0.2860,), (0.3530,), 70_000, 10_000),
    "mnist": DatasetInfo((1, 28, 28), 10, (0.1307,), (0.3081,), 70_000, 10_000),
    "cifar10": DatasetInfo((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 60_000, 10_000),
    "digits": DatasetInfo((1, 8, 8), 10, (0.3054,), (0.3762,), 1_797, 1_797 - int(0.8 * 1_797)),
}


def dataset_info(data: "DataSpec") -> DatasetInfo | None:
    """Shape and classes of a builtin dataset; None for a factory dataset (known only once loaded)."""
    if data.dataset == "synthetic":
        s = data.synthetic
        return DatasetInfo(tuple(s.shape), s.num_classes, (0.5,) * s.shape[0], (0.25,) * s.shape[0],
                           s.train_samples + s.test_samples, s.test_samples)
    return BUILTIN_INFO.get(data.dataset)


def load_image_tensors(data: "DataSpec", train: bool) -> ImageTensors:
    """Decode a builtin dataset split into uint8 tensors (on the CPU)."""
    loaders = {
        "fashion_mnist": _torchvision_idx,
        "mnist": _torchvision_idx,
        "cifar10": _cifar10,
        "digits": _digits,
        "synthetic": _synthetic,
    }
    return loaders[data.dataset](data, train)


DOWNLOADED = ("fashion_mnist", "mnist", "cifar10")  # torchvision's: on disk, or downloaded by the job


def require_on_disk(data: "DataSpec") -> None:
    """Raise the run's own message (where the files go) unless the dataset is on disk."""
    _open_torchvision(data.model_copy(update={"download": False}), train=True)


def on_disk(data: "DataSpec") -> bool:
    """Whether a builtin dataset can be read without a download (dry runs use this)."""
    if data.dataset in ("digits", "synthetic"):
        return True
    try:
        _torchvision_class(data)(root=data.root, train=True, download=False)
        return True
    except RuntimeError:
        return False


def _torchvision_class(data: "DataSpec"):
    from torchvision import datasets

    return {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[data.dataset]


def _open_torchvision(data: "DataSpec", train: bool):
    cls = _torchvision_class(data)
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S):
            return cls(root=data.root, train=train, download=data.download)
    except (RuntimeError, OSError) as err:  # torchvision's "Dataset not found", or the download's failure
        put = _where_files_go(cls, data.root)
        if not data.download:
            raise bad_input(f"data.root: {data.dataset} not found under {Path(data.root).resolve()}; {put}, "
                            "or set data.download: true") from None
        raise bad_input(f"data.download: downloading {data.dataset} from {_download_source(cls)} failed "
                        f"({_download_reason(err)}); fetch it where the internet is reachable and {put}") from None


# torchvision's urlopen has no timeout: a network that drops packets would hang the job for minutes
DOWNLOAD_TIMEOUT_S = 60


@contextmanager
def _network_timeout(seconds: float):
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _where_files_go(cls, root: str) -> str:
    """What to put where, in the folder torchvision reads (MNIST's ROOT/<Class>/raw, CIFAR's archive folder)."""
    if hasattr(cls, "mirrors"):
        names = ", ".join(Path(name).stem for name, _ in cls.resources)
        return f"put {names} (the .gz files, unpacked) in {Path(root).resolve() / cls.__name__ / 'raw'}"
    return f"unpack {cls.filename} in {Path(root).resolve()} (it makes {cls.base_folder}/)"


def _download_source(cls) -> str:
    return " or ".join(cls.mirrors) if hasattr(cls, "mirrors") else cls.url


def _download_reason(err: Exception) -> str:
    """The last line of torchvision's message, e.g. '<urlopen error [Errno -2] Name or service not known>'."""
    lines = [line.strip() for line in str(getattr(err, "reason", None) or err).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    return reason.removeprefix("<urlopen error ").removesuffix(">")


def _torchvision_idx(data: "DataSpec", train: bool) -> ImageTensors:
    ds = _open_torchvision(data, train)  # torchvision's own IDX reader
    return ImageTensors(ds.data.unsqueeze(1).contiguous(), ds.targets.long())


def _cifar10(data: "DataSpec", train: bool) -> ImageTensors:
    import torch

    ds = _open_torchvision(data, train)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.tensor(ds.targets, dtype=torch.long))


def _digits(data: "DataSpec", train: bool) -> ImageTensors:
    """scikit-learn's bundled 8x8 digits: real data, no download. A fixed 80/20 split."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    cut = int(0.8 * len(labels))
    chosen = order[:cut] if train else order[cut:]
    return ImageTensors(images[chosen].contiguous(), labels[chosen])


def _synthetic(data: "DataSpec", train: bool) -> ImageTensors:
    """Learnable random data of a declared shape: one noisy prototype image per class.
    Deterministic (fixed seeds), so runs and tests repeat exactly."""
    import torch

    s = data.synthetic
    protos = torch.rand((s.num_classes, *s.shape), generator=torch.Generator().manual_seed(99)) * 255
    n = s.train_samples if train else s.test_samples
    gen = torch.Generator().manual_seed(1 if train else 2)
    labels = torch.randint(0, s.num_classes, (n,), generator=gen)
    noise = torch.randn((n, *s.shape), generator=gen) * 60
    images = (protos[labels] + noise).clamp(0, 255).to(torch.uint8)
    return ImageTensors(images, labels)


def load_factory_dataset(data: "DataSpec", train: bool):
    """A user's `package.module:factory(train=..., root=..., **args)` returning a torch Dataset."""
    factory = import_factory(data.dataset, "data.dataset")
    return call_factory(factory, data.dataset, "data.args", train=train, root=data.root, **data.args)


def call_factory(factory, path: str, args_field: str, **kwargs):
    """factory(**kwargs), after checking that its signature takes them."""
    check_signature(factory, path, args_field, **kwargs)
    return factory(**kwargs)


def check_signature(factory, path: str, args_field: str, **kwargs) -> None:
    """Whether factory(**kwargs) can be called: a mismatch is the spec's (one line naming the
    fields), not a traceback from inside the user's code."""
    import inspect

    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise bad_input(f"{args_field}: {path} cannot be called with {', '.join(kwargs)} ({err})") from None
    except ValueError:
        pass  # no signature to read (a builtin): let the call tell


CODE_PATHS = "GPUJOB_CODE_PATHS"  # where a spec's package.module:factory is looked for, besides sys.path


def code_paths_for(spec_file: Path | str, cwd: Path | str | None = None) -> str:
    """The one rule on every backend: the spec's folder and the current directory are importable."""
    folders = [str(Path(spec_file).resolve().parent), str(Path(cwd or Path.cwd()).resolve())]
    return os.pathsep.join(dict.fromkeys(folders))


def import_factory(path: str, field: str):
    import sys

    for folder in reversed(os.environ.get(CODE_PATHS, "").split(os.pathsep)):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise bad_input(f"{field}: cannot import {module_name} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise bad_input(f"{field}: {module_name} has no callable {attr}")
    return factory
