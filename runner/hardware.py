"""What this machine can train on. Asked without importing torch where the answer is plainly
"no CUDA GPU" (no NVIDIA driver loaded), so choosing a backend stays quick on a laptop."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def nvidia_driver_loaded() -> bool:
    return Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi") is not None


def cuda_gpus() -> list[tuple[str, float]]:
    """(name, memory in GB) of each CUDA GPU here; [] without any."""
    if not nvidia_driver_loaded():
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 1e9)
            for i in range(torch.cuda.device_count())]


def mps_available() -> bool:
    """Apple's GPU (MPS); asked without importing torch anywhere but on a Mac."""
    if sys.platform != "darwin":
        return False
    import torch

    return torch.backends.mps.is_available()


def local_accelerator() -> str:
    gpus = cuda_gpus()
    if gpus:
        return f"cuda x{len(gpus)} ({gpus[0][0]})"
    return "mps" if mps_available() else "cpu"
