"""What this machine can train on, asked without importing torch where possible."""

from __future__ import annotations


def local_accelerator() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda x{torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
