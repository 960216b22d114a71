"""env.json: what ran the job (versions, devices, git commit), for reproducing it."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys

from runner.training.threads import thread_record


def describe_environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        torchvision = version("torchvision")  # importing it costs seconds; its version is all we need
    except PackageNotFoundError:
        torchvision = None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"],
        # tells two cards of one name apart (A100 40 GB / 80 GB) when `gpujob estimate` reuses this run's speed
        "device_memory_gb": [round(torch.cuda.get_device_properties(i).total_memory / 1e9, 1)
                             for i in range(torch.cuda.device_count())] if cuda else [],
        "mps_available": torch.backends.mps.is_available(),
        "git_commit": git_commit(),
        "gpujob_image": os.environ.get("GPUJOB_IMAGE"),
        "threads": thread_record(),  # read by the diagnosis: threads that fought over cores
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
