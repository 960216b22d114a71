"""Models for the SLURM tests, given in a spec as `tests.slurm_plugins:FACTORY`: they report what
a task of the job sees, or make rank 0's checkpoint slow, as a large model's is."""

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from tests.plugins import tiny_mlp


def cpu_reporter(num_classes: int, input_shape, report_to: str) -> nn.Module:
    """A small MLP; in a task of a SLURM job step, each rank first writes REPORT_TO-RANK.json:
    the CPUs it may run on and the threads torch starts (OMP_NUM_THREADS). (gpujob also builds
    the model where it submits, to check it: that is not a task.)"""
    if "SLURM_STEP_ID" in os.environ:
        Path(f"{report_to}-{os.environ['RANK']}.json").write_text(json.dumps(
            {"cpus": sorted(os.sched_getaffinity(0)), "threads": torch.get_num_threads()}))
    return tiny_mlp(num_classes, input_shape)


class SlowToSave(nn.Module):
    """An MLP whose state_dict takes `save_s` seconds once the file `slow_from` exists: rank 0's
    checkpoint write (the only caller while training) as slow as a large model's on a shared
    file system."""

    def __init__(self, num_classes: int, input_shape, slow_from: str, save_s: float):
        super().__init__()
        self.net = tiny_mlp(num_classes, input_shape)
        self.slow_from, self.save_s = Path(slow_from), save_s

    def forward(self, x):
        return self.net(x)

    def state_dict(self, *args, **kwargs):
        if self.slow_from.exists():
            time.sleep(self.save_s)
        return super().state_dict(*args, **kwargs)


def slow_to_save(num_classes: int, input_shape, slow_from: str, save_s: float = 40) -> nn.Module:
    return SlowToSave(num_classes, input_shape, slow_from, save_s)
