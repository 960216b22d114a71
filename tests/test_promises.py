"""README promises about a local run that nothing else tests: the time-based checkpoint, what a
checkpoint holds, stop_on_nan: false, a resume after one DDP rank was killed, the defaults of
--master-port and --nproc-per-node auto, and the cuda > mps > cpu pick."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest

from runner.training.checkpoint import CheckpointStore, read_checkpoint
from tests.conftest import REPO, cli, cli_subprocess, read_jsonl, read_jsonl_if, wait_for


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def digits(write_spec):
    def make(**train):
        return write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                          optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                          train={"epochs": 40, "log_every_steps": 5, **train})
    return make


@pytest.mark.parametrize("every_minutes, expect_checkpoint", [(0.01, True), (10, False)])
def test_checkpoints_come_every_checkpoint_every_minutes(digits, tmp_path, every_minutes, expect_checkpoint):
    run = tmp_path / "run"
    proc = _start("run", digits(checkpoint_every_minutes=every_minutes), "--run-dir", run)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 5, "the training")
    import time

    time.sleep(3)  # well past 0.01 min (0.6 s) of training; nowhere near 10 min
    proc.kill()  # no SIGTERM: only what the clock made it write is there
    proc.wait()
    assert bool(CheckpointStore(run).paths()) is expect_checkpoint


def test_a_checkpoint_holds_everything_a_resume_needs(write_spec, tmp_path):
    run = tmp_path / "run"
    assert cli("run", write_spec(train={"epochs": 1, "max_steps": 4}), "--run-dir", run).exit_code == 0
    state = read_checkpoint(CheckpointStore(run).paths()[0])
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "loop", "world_size", "spec"}
    assert set(state["rng"]) >= {"python", "numpy", "torch"}  # and "cuda" where there is one
    from runner.training.checkpoint import restore_rng_states

    restore_rng_states({**state["rng"], "cuda": ["a CUDA machine's state"]})  # read on a CPU: left alone


def test_stop_on_nan_false_trains_on_through_a_nan(write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                      optimizer={"name": "sgd", "lr": 1e12},
                      train={"epochs": 2, "log_every_steps": 5, "stop_on_nan": False})
    result = cli("run", spec, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2 and math.isnan(summary["train_loss"])


def test_the_nan_stop_names_the_step_and_the_checkpoint_kept(write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                      optimizer={"name": "sgd", "lr": 1e12},
                      train={"epochs": 3, "log_every_steps": 1, "checkpoint_every_minutes": 0})
    out = cli_subprocess("run", spec, "--run-dir", tmp_path / "run")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    kept = CheckpointStore(tmp_path / "run").paths()[0].name
    step = int(kept.removeprefix("step-").removesuffix(".pt"))
    assert f"by step {step + 1} " in lines[0] and f"Last good checkpoint: {kept}" in lines[0]


def test_a_ddp_run_with_a_killed_rank_resumes_to_the_uninterrupted_curve(digits, tmp_path):
    spec = digits(epochs=3, checkpoint_every_minutes=0)
    reference = cli_subprocess("run", spec, "--run-dir", tmp_path / "reference", "--nproc-per-node", 2)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", 2)
    wait_for(lambda: any(r["kind"] == "epoch" for r in read_jsonl_if(run / "metrics.jsonl")), "an epoch")
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    rank_1 = next(pid for pid in workers if b"RANK=1\0" in open(f"/proc/{pid}/environ", "rb").read())
    os.kill(int(rank_1), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "rank 1 of 2 was killed by SIGKILL" in stderr
    resumed = cli_subprocess("resume", run, "--nproc-per-node", 2)
    assert resumed.returncode == 0, resumed.stderr
    ours, ref = (_epochs(d) for d in (run, tmp_path / "reference"))
    assert [e["epoch"] for e in ours] == [1, 2, 3]
    for a, b in zip(ours, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["test_loss"] == pytest.approx(b["test_loss"],
                                                                                                     rel=1e-4)


def _epochs(run):
    return [m for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "epoch"]


def test_nproc_per_node_auto_is_resources_processes_on_a_cpu(digits, tmp_path):
    spec = digits(epochs=1, max_steps=4)
    out = cli_subprocess("run", spec, "--set", "resources.processes=2", "--nproc-per-node", "auto",
                         "--run-dir", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2


def test_master_port_defaults_to_29500_across_nodes(digits, tmp_path):
    node = _start("run", digits(), "--nnodes", 2, "--node-rank", 1, "--master-addr", "127.0.0.1")
    said = []
    wait_for(lambda: said.append(node.stderr.readline()) or "waiting for" in said[-1], "the waiting line", 60)
    node.send_signal(signal.SIGINT)
    node.communicate(timeout=120)
    assert "waiting for node 0 at 127.0.0.1:29500" in said[-1]


def test_the_device_is_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    from runner.training.distributed import WorkerContext, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device(WorkerContext(rank=3, local_rank=3, world_size=4)) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(WorkerContext()) == torch.device("mps")
    assert pick_device(WorkerContext(rank=0, local_rank=0, world_size=2)) == torch.device("cpu")  # gloo, no MPS DDP
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device(WorkerContext()) == torch.device("cpu")
