"""What gpujob says when something is wrong: one line naming the cause, the right exit code, never
a traceback, whatever the run folder holds and whenever Ctrl-C comes (issues 22 and 23)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from runner.errors import GpujobError, last_error_line
from tests.conftest import REPO, cli, cli_subprocess


# ---- bf16 on a card below Ampere -----------------------------------------------------------


def _a_cuda_card(monkeypatch, name: str, capability: tuple[int, int]):
    """This machine as one that has `name`: torch's answers about the card, as the locked torch
    gives them (is_bf16_supported() counts emulation, so it says True on a T4)."""
    import torch

    import runner.hardware

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability[0] >= 8)
    monkeypatch.setattr(runner.hardware, "cuda_gpus", lambda: [(name, 15.8)])


def test_the_device_refuses_bf16_on_a_t4_and_allows_it_on_an_ampere_card(monkeypatch):
    import torch

    from runner.train_setup import autocast_for

    _a_cuda_card(monkeypatch, "Tesla T4", (7, 5))
    with pytest.raises(GpujobError) as err:
        autocast_for("bf16", torch.device("cuda", 0))
    assert err.value.exit_code == 2
    assert err.value.message == ("train.precision: Tesla T4 (compute capability 7.5) has no bf16, which needs 8.0 "
                                 "(Ampere) or newer; use fp16 (gpujob runs it with a gradient scaler) or fp32")
    assert callable(autocast_for("fp16", torch.device("cuda", 0)))  # what a T4 does
    _a_cuda_card(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0))
    assert callable(autocast_for("bf16", torch.device("cuda", 0)))


def test_the_dry_run_on_this_machines_t4_refuses_bf16(monkeypatch, write_spec, tmp_path):
    """A spec that asks for no GPU runs on whatever card is here: the dry run asks that card."""
    _a_cuda_card(monkeypatch, "Tesla T4", (7, 5))
    result = cli("submit", write_spec(train={"precision": "bf16"}), "--dry-run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.stdout
    assert result.stderr.endswith("gpujob: train.precision: Tesla T4 (compute capability 7.5) has no bf16, which "
                                  "needs 8.0 (Ampere) or newer; use fp16 (gpujob runs it with a gradient scaler) "
                                  "or fp32\n")
    assert not (tmp_path / "runs").exists()
