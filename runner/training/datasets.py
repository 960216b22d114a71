"""Datasets: what each one is (shape, classes, normalisation) and how to load it.

Small image datasets are decoded once into one uint8 tensor (`ImageTensors`) so the
training loop can batch them by index on the device (see batches.py). Datasets given as
`package.module:factory` stay ordinary torch Datasets and go through a DataLoader.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import bad_input
from runner.usercode.imports import call_factory, import_factory

if TYPE_CHECKING:
    import torch

    from runner.spec.model import DataSpec


@dataclass
class ImageTensors:
    """A whole split as uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: "torch.Tensor"
    labels: "torch.Tensor"

    def __len__(self) -> int:
        return len(self.labels)


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
    made = _folders_a_download_makes(cls, data.root)
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S):
            return cls(root=data.root, train=train, download=data.download)
    except (RuntimeError, OSError) as err:  # torchvision's "Dataset not found", or the download's failure
        _remove_empty(made)  # a failed download leaves no empty folders behind
        put = _where_files_go(cls, data.root)
        if not data.download:
            raise bad_input(f"data.root: {data.dataset} not found under {Path(data.root).resolve()}; {put}, "
                            "or set data.download: true") from None
        raise bad_input(f"data.download: downloading {data.dataset} from {_download_source(cls)} failed "
                        f"({_download_reason(err)}); fetch it where the internet is reachable and {put}") from None


# torchvision's urlopen has no timeout: a network that drops packets would hang the job for minutes
DOWNLOAD_TIMEOUT_S = 60
SOURCE_CHECK_TIMEOUT_S = 8


def _folders_a_download_makes(cls, root: str) -> list[Path]:
    """The folders torchvision makes for a download that do not exist yet, deepest first."""
    base = Path(root)
    wanted = [base / cls.__name__ / "raw", base / cls.__name__] if hasattr(cls, "mirrors") else []
    wanted.append(base)
    return [folder for folder in wanted if not folder.exists()]


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only if empty: a partial download's files are never removed here
        except OSError:
            pass


def download_source_problem(data: "DataSpec") -> str | None:
    """Why a torchvision dataset's download source does not answer from here (None: it does):
    the dry run asks before it says the job will download it."""
    import urllib.error
    import urllib.request

    cls = _torchvision_class(data)
    urls = [mirror + cls.resources[0][0] for mirror in cls.mirrors] if hasattr(cls, "mirrors") else [cls.url]
    reasons = []
    for url in urls:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=SOURCE_CHECK_TIMEOUT_S) as answer:
                if answer.status < 400:
                    return None
                reasons.append(f"{url}: HTTP {answer.status}")
        except urllib.error.HTTPError as err:
            reasons.append(f"{url}: HTTP {err.code}")
        except (urllib.error.URLError, OSError, ValueError) as err:
            reasons.append(f"{url}: {_download_reason(err)}")
    return "; ".join(reasons)


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


def where_files_go(data: "DataSpec") -> str:
    """For a message: fetch the dataset where the internet is reachable and put it where the job reads it."""
    return f"fetch it where the internet is reachable and {_where_files_go(_torchvision_class(data), data.root)}"


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
