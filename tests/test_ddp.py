"""DDP on one machine with CPU workers (gloo): same curve as one worker, failures stop
the whole job quickly with the failing rank's error, and no worker is left behind."""

import json
import subprocess
import time

import pytest

from tests.conftest import cli, cli_subprocess, read_jsonl


def _ddp_spec(fashion_spec, processes, **train):
    return fashion_spec(optimizer={"name": "sgd", "lr": 0.05}, resources={"processes": processes},
                        train={"epochs": 2, "log_every_steps": 10, "seed": 3, **train})


def _epochs(run):
    return [m for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "epoch"]


def _gpujob_workers(under) -> list[str]:
    """The workers still alive of runs under this folder (other tests may be training beside us)."""
    out = subprocess.run(["pgrep", "-af", f"runner.cli run .*{under}.* --worker"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def test_two_workers_follow_the_one_worker_loss_curve(fashion_spec, tmp_path):
    one = cli("submit", _ddp_spec(fashion_spec, 1), "--runs-dir", tmp_path / "one")
    two = cli("submit", _ddp_spec(fashion_spec, 2), "--runs-dir", tmp_path / "two")
    assert one.exit_code == 0 and two.exit_code == 0, two.stderr
    a, b = _epochs(one.run_dir), _epochs(two.run_dir)
    steps_a = [m["loss"] for m in read_jsonl(one.run_dir / "metrics.jsonl") if m["kind"] == "step"]
    steps_b = [m["loss"] for m in read_jsonl(two.run_dir / "metrics.jsonl") if m["kind"] == "step"]
    assert steps_a == pytest.approx(steps_b, rel=1e-4)
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["test_loss"] == pytest.approx(y["test_loss"], rel=1e-4)
        assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1e-9)

    summary = json.loads((two.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["per_worker_samples_per_s"] == pytest.approx(summary["samples_per_s"] / 2)
    timing = json.loads((two.run_dir / "timing.json").read_text())
    assert all(e["allreduce_s"] > 0 and e["barrier_wait_s"] >= 0 for e in timing["epochs"])
    # only rank 0 writes: one metrics line per logged step
    assert len(steps_b) == 8


def test_batch_size_must_split_over_workers(fashion_spec, tmp_path):
    spec = fashion_spec(data={"dataset": "digits", "batch_size": 33}, resources={"processes": 2})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "data.batch_size" in result.stderr and "2 workers" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-made: not even the runs folder it made


def _saboteur_spec(write_spec, mode):
    return write_spec(model={"name": "tests.plugins:saboteur", "args": {"rank": 1, "mode": mode, "at_step": 3}},
                      data={"dataset": "digits", "batch_size": 32}, train={"epochs": 1, "collective_timeout_s": 5},
                      resources={"processes": 2, "timeout_minutes": 5})


def test_a_failing_rank_stops_the_job_with_its_error(write_spec, tmp_path):
    start = time.monotonic()
    out = cli_subprocess("submit", _saboteur_spec(write_spec, "raise"), "--runs-dir", tmp_path / "runs")
    assert out.returncode == 1, out.stderr
    assert "rank 1 of 2 failed" in out.stderr and "planted failure at step 3" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - start < 60
    (run,) = (tmp_path / "runs").iterdir()
    assert "planted failure" in (run / "rank-1.log").read_text()
    assert not (run / "summary.json").exists()
    assert _gpujob_workers(tmp_path) == []


def test_a_hung_rank_is_caught_by_the_collective_timeout(write_spec, tmp_path):
    start = time.monotonic()
    out = cli_subprocess("submit", _saboteur_spec(write_spec, "hang"), "--runs-dir", tmp_path / "runs")
    elapsed = time.monotonic() - start
    assert out.returncode == 1, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("gpujob: rank 1 of 2 stopped answering (still running but silent); rank 0 timed out "
                           "waiting for it after train.collective_timeout_s (5 s)"), line  # the hung rank, named
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "rank-1.log").exists()
    assert elapsed < 90  # 5 s collective timeout, plus start-up; not the 5 min job timeout
    assert _gpujob_workers(tmp_path) == []


def test_run_spans_two_nodes_started_by_hand(fashion_spec, tmp_path):
    """Two `gpujob run` processes standing in for two machines, as on two rented boxes."""
    from tests.conftest import REPO
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _ddp_spec(fashion_spec, 1)
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    nodes = [subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), *common, "--node-rank", str(r),
                               "--runs-dir", str(tmp_path / f"node{r}")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    run = tmp_path / "node0" / outs[0][0].strip().splitlines()[-1].split("/")[-1]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert not (tmp_path / "node1").exists()  # only rank 0's node writes a run folder
    single = cli("submit", spec, "--runs-dir", tmp_path / "single").run_dir
    assert _epochs(run)[-1]["loss"] == pytest.approx(_epochs(single)[-1]["loss"], rel=1e-4)


def test_rank_0_loads_the_data_before_the_others_so_downloads_never_overlap(write_spec, tmp_path):
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.plugins:turn_recorder", "root": str(tmp_path), "batch_size": 32,
                            "num_workers": 0},
                      resources={"processes": 2}, train={"epochs": 1})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    turns = (tmp_path / "turns.log").read_text().split("\n")[:-1]
    # train and test split each: rank 0 starts and ends both before rank 1 starts
    assert turns == ["start 0", "end 0", "start 0", "end 0", "start 1", "end 1", "start 1", "end 1"]
