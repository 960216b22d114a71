"""Fault injection: what a careful user does to a run on purpose, and what gpujob must still
promise (nothing lost or overwritten, never a traceback, no worker outlives the job, exact
resume). Signals to single ranks, SIGSTOP, damaged files, paths that cannot be written and a
small full tmpfs (where this machine lets a test mount one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli, cli_subprocess, read_jsonl, read_jsonl_if, wait_for

LOSS_TOLERANCE = 1e-4  # DDP against one worker, as tests/test_ddp.py


@pytest.fixture
def digits(write_spec):
    def make(**sections):
        base = dict(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                    train={"epochs": 3, "log_every_steps": 5, "checkpoint_every_minutes": 0, "seed": 1})
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return write_spec(**base)
    return make


def _start(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _epochs(run: Path) -> list[dict]:
    return [m for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "epoch"]


def _workers_of(run: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"runner.cli run .*{run}"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def _rank_pids(run: Path, launcher: int) -> dict[int, int]:
    """The launcher's workers for `run`, by rank (from their environment): its children, not
    their DataLoader processes."""
    found = {}
    for line in _workers_of(run):
        pid = int(line.split()[0])
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        ranks = [e for e in env if e.startswith(b"RANK=")]
        if ranks and parent == launcher:
            found[int(ranks[0][5:])] = pid
    return found


# ---- silent wrong results and lost records ------------------------------------------------


@pytest.mark.parametrize("before, after", [(1, 2), (2, 1)])
def test_resume_at_another_worker_count_follows_the_uninterrupted_curve(digits, tmp_path, before, after):
    spec = digits()
    reference = cli_subprocess("run", spec, "--run-dir", tmp_path / "reference", "--nproc-per-node", before)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", before)
    wait_for(lambda: any(r["kind"] == "step" and r["epoch"] == 2 for r in read_jsonl_if(run / "metrics.jsonl")),
             "a step of epoch 2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    resumed = cli_subprocess("resume", run, "--nproc-per-node", after)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming with {after} worker(s), the checkpoint was written by {before}" in resumed.stderr
    got, want = _epochs(run), _epochs(tmp_path / "reference")
    assert [e["epoch"] for e in got] == [1, 2, 3]
    for mine, theirs in zip(got, want):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=LOSS_TOLERANCE)
        assert mine["test_loss"] == pytest.approx(theirs["test_loss"], rel=LOSS_TOLERANCE)
    assert json.loads((run / "summary.json").read_text())["world_size"] == after


@pytest.mark.parametrize("where", ["mid-file", "last line"])
def test_a_damaged_metrics_line_loses_no_intact_record(digits, tmp_path, where):
    run = tmp_path / "run"
    assert cli("run", digits(train={"epochs": 2}), "--run-dir", run).exit_code == 0
    (run / "summary.json").unlink()  # as if it died at its very end
    lines = (run / "metrics.jsonl").read_text().splitlines()
    damaged = 4 if where == "mid-file" else len(lines) - 1
    lines[damaged] = lines[damaged][: len(lines[damaged]) // 2]  # cut in half: not JSON
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    resumed = cli_subprocess("resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"metrics.jsonl line(s) {damaged + 1} were damaged and are dropped" in resumed.stderr
    records = read_jsonl(run / "metrics.jsonl")  # every line whole again
    intact = [json.loads(line) for i, line in enumerate(lines) if i != damaged]
    assert records[: len(intact)] == intact  # every intact record kept, in order


def test_a_spec_edited_after_the_checkpoint_is_refused_naming_the_fields(digits, tmp_path):
    run = tmp_path / "run"
    assert cli("run", digits(train={"epochs": 2}), "--run-dir", run).exit_code == 0
    (run / "summary.json").unlink()
    (run / "spec.yaml").write_text((run / "spec.yaml").read_text().replace("name: cnn", "name: mlp"))
    def files():  # the run's files; the lock and the record are bookkeeping (the record notes the attempt)
        return {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in (".lock", "submission.json")}

    before = files()
    out = cli_subprocess("resume", run)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "the spec no longer matches the run's checkpoint" in out.stderr and "model.name ('cnn' -> 'mlp')" in out.stderr
    assert files() == before  # nothing changed


def test_labels_past_num_classes_are_found_when_the_data_loads(digits, tmp_path):
    started = time.monotonic()
    out = cli_subprocess("submit", digits(model={"num_classes": 3}), "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("gpujob: model.num_classes: 3, but the data has label")
    assert not (tmp_path / "runs").exists() and time.monotonic() - started < 60


def test_a_finished_resume_leaves_no_stale_error_log(digits, tmp_path):
    run = tmp_path / "run"
    assert cli("run", digits(train={"epochs": 2}), "--run-dir", run).exit_code == 0
    (run / "summary.json").unlink()
    (run / "error.log").write_text("Traceback: the failed attempt's\n")
    assert cli_subprocess("resume", run).returncode == 0
    assert not (run / "error.log").exists()
    (kept,) = (run / "job").glob("error-*.log")  # the failed attempt's, kept aside
    assert "the failed attempt's" in kept.read_text()


def test_step_throughput_is_not_inflated_across_an_epoch_boundary(digits, tmp_path):
    # 44 steps an epoch, a step line every 30: the second line's window spans the boundary.
    run = tmp_path / "run"
    assert cli("run", digits(train={"epochs": 2, "log_every_steps": 30}), "--run-dir", run).exit_code == 0
    epochs = {e["epoch"]: e["samples_per_s"] for e in _epochs(run)}
    for step in (m for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "step"):
        assert step["samples_per_s"] < 5 * max(epochs.values()), step


def test_resume_says_what_it_does(digits, tmp_path):
    run = tmp_path / "run"
    assert cli("run", digits(train={"epochs": 1}), "--run-dir", run).exit_code == 0
    (run / "summary.json").unlink()
    out = cli_subprocess("resume", run)
    assert "gpujob: resuming from step 44 (checkpoint step-00000044.pt, written " in out.stderr
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    (run / "summary.json").unlink()
    again = cli_subprocess("resume", run)
    assert again.returncode == 0 and "gpujob: no checkpoint yet: starting over" in again.stderr


# ---- the file system ----------------------------------------------------------------------


def test_run_dir_with_only_dot_files_is_not_taken_for_empty(digits, tmp_path):
    mine = tmp_path / "mine"
    (mine / "job").mkdir(parents=True)
    (mine / ".draft.tmp").write_text("the user's draft")
    out = cli_subprocess("run", digits(), "--run-dir", mine)
    assert out.returncode == 2 and "holds files gpujob did not make" in out.stderr
    assert (mine / ".draft.tmp").read_text() == "the user's draft"  # never deleted
    assert sorted(p.name for p in mine.iterdir()) == [".draft.tmp", "job"]


def test_runs_dir_that_is_a_file_or_under_one_is_one_line(digits, tmp_path):
    (tmp_path / "afile").write_text("x")
    for runs in (tmp_path / "afile", tmp_path / "afile" / "below"):
        out = cli_subprocess("submit", digits(), "--runs-dir", runs)
        assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") <= 2, out.stderr
        assert f"--runs-dir: {runs if runs.name == 'afile' else runs.parent}" in out.stderr
    out = cli_subprocess("run", digits(), "--run-dir", tmp_path / "afile")
    assert out.returncode == 2 and "is a file, not a folder" in out.stderr


@pytest.mark.parametrize("broken", ["checkpoints is a file", "metrics.jsonl is a folder"])
def test_a_run_folder_whose_files_cannot_be_written_is_one_line(digits, tmp_path, broken):
    run = tmp_path / "run"
    assert cli("run", digits(train={"epochs": 1}), "--run-dir", run).exit_code == 0
    (run / "summary.json").unlink()
    kept_metrics = (run / "metrics.jsonl").read_text()
    if broken == "checkpoints is a file":
        for path in (run / "checkpoints").iterdir():
            path.unlink()
        (run / "checkpoints").rmdir()
        (run / "checkpoints").write_text("not a folder")
    else:
        (run / "metrics.jsonl").unlink()
        (run / "metrics.jsonl").mkdir()
    out = cli_subprocess("resume", run)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    name = broken.split()[0]
    assert out.stderr.strip().splitlines()[-1].startswith(f"gpujob: {run / name}"), out.stderr
    if broken == "checkpoints is a file":
        assert (run / "metrics.jsonl").read_text() == kept_metrics  # the records are not cut back


def _mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    made = []

    def mount(path: Path, size: str, read_only: bool = False) -> Path:
        if os.geteuid() != 0 or not _mount_tmpfs(path, size, read_only):
            pytest.skip("this machine does not let the test mount a tmpfs (needs root)")
        made.append(path)
        return path

    yield mount
    for path in made:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_runs_dir_is_one_line(digits, tmp_path, mounts):
    runs = mounts(tmp_path / "ro", "1m", read_only=True)
    out = cli_subprocess("submit", digits(), "--runs-dir", runs)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "Read-only file system" in out.stderr or "permission denied" in out.stderr


def test_a_full_disk_fails_the_job_and_keeps_the_last_good_checkpoint(digits, tmp_path, mounts):
    runs = mounts(tmp_path / "small", "900k")
    # A wide MLP: each checkpoint (weights + momentum) is ~300 kB, so the third cannot fit.
    spec = digits(model={"name": "tests.plugins:tiny_mlp", "args": {"hidden": 1200}}, train={"epochs": 50})
    out = cli_subprocess("run", spec, "--run-dir", runs / "run")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("gpujob: the disk is full: writing") and "the last good checkpoint step-" in line
    kept = sorted((runs / "run" / "checkpoints").glob("step-*.pt"))
    assert kept and not list((runs / "run" / "checkpoints").glob(".*.tmp"))
    from runner.training.checkpoint import read_checkpoint

    assert read_checkpoint(kept[-1])["loop"]["step"] > 0  # whole, checksum and all


def test_a_sigkilled_launcher_leaves_nothing_behind(digits, tmp_path):
    before = set(Path(tempfile_dir()).glob("gpujob-launch-*"))
    run = tmp_path / "run"
    launcher = _start("run", digits(train={"epochs": 50}), "--run-dir", run, "--nproc-per-node", 2)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2, "the job's steps")
    launcher.kill()
    launcher.wait()
    wait_for(lambda: _workers_of(run) == [], "the workers to die with their launcher", timeout=10)
    assert set(Path(tempfile_dir()).glob("gpujob-launch-*")) == before


def test_a_sigkilled_single_worker_leaves_no_dataloader_orphans(write_spec, tmp_path):
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.plugins:blobs", "batch_size": 16, "num_workers": 2,
                            "args": {"samples": 20000}},
                      train={"epochs": 50, "log_every_steps": 5})
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2, "the job's steps")
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the DataLoader has worker processes"
    proc.kill()
    proc.wait()
    time.sleep(1.0)  # DataLoader's own watchdog would take seconds; PDEATHSIG is at once
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    assert alive == []


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


# ---- the launcher's account of what happened ----------------------------------------------


@pytest.mark.parametrize("victim", [0, 1])
def test_the_rank_killed_from_outside_is_the_one_named(digits, tmp_path, victim):
    run = tmp_path / "run"
    proc = _start("run", digits(train={"epochs": 50}), "--run-dir", run, "--nproc-per-node", 2)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2 and len(_rank_pids(run, proc.pid)) == 2, "both ranks")
    os.kill(_rank_pids(run, proc.pid)[victim], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"gpujob: rank {victim} of 2 was killed by SIGKILL, not by gpujob"), line
    assert (run / f"rank-{victim}.log").exists() and not (run / f"rank-{1 - victim}.log").exists()
    assert _workers_of(run) == []


def test_a_factory_dataset_rank_killed_is_named_not_a_dataloader_worker(write_spec, tmp_path):
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.plugins:blobs", "batch_size": 16, "num_workers": 1,
                            "args": {"samples": 20000}},
                      resources={"processes": 2}, train={"epochs": 50, "log_every_steps": 5})
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", 2)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2 and len(_rank_pids(run, proc.pid)) == 2, "both ranks")
    os.kill(_rank_pids(run, proc.pid)[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert stderr.strip().splitlines()[-1].startswith("gpujob: rank 1 of 2 was killed by SIGKILL"), stderr[-2000:]


def test_a_stopped_rank_is_named_as_the_one_that_stopped_answering(digits, tmp_path):
    run = tmp_path / "run"
    spec = digits(train={"epochs": 50, "collective_timeout_s": 5})
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", 2)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2 and len(_rank_pids(run, proc.pid)) == 2, "both ranks")
    os.kill(_rank_pids(run, proc.pid)[1], signal.SIGSTOP)
    _, stderr = proc.communicate(timeout=120)
    line = stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and line.startswith("gpujob: rank 1 of 2 stopped answering (stopped (SIGSTOP)); "
                                                    "rank 0 timed out waiting for it"), line
    assert _workers_of(run) == []


def test_ctrl_c_while_a_rank_is_stopped_says_only_what_happened(digits, tmp_path):
    """SIGSTOP then Ctrl-C: the launcher wakes the stopped rank (SIGCONT) with its SIGTERM, both
    checkpoint, and the message names that checkpoint, which is on disk."""
    run = tmp_path / "run"
    spec = digits(train={"epochs": 50, "checkpoint_every_minutes": 10, "collective_timeout_s": 120})
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", 2)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2 and len(_rank_pids(run, proc.pid)) == 2,
             "both ranks")
    os.kill(_rank_pids(run, proc.pid)[1], signal.SIGSTOP)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    line = stderr.strip().splitlines()[-1]
    assert proc.returncode == 130 and "(the workers saved it)" in line, line
    named = line.split("last checkpoint ")[1].split()[0]
    assert (run / "checkpoints" / named).exists()


def test_ctrl_c_while_a_rank_hangs_claims_no_checkpoint(write_spec, tmp_path):
    """A rank stuck inside a step (a deadlock): nobody can checkpoint, and the message says so."""
    hung = tmp_path / "rank-1-hangs"
    spec = write_spec(model={"name": "tests.plugins:saboteur",
                             "args": {"rank": 1, "mode": "hang", "at_step": 3, "hung_note": str(hung)}},
                      data={"dataset": "digits", "batch_size": 32}, resources={"processes": 2},
                      train={"epochs": 5, "collective_timeout_s": 300, "checkpoint_every_minutes": 10,
                             "stop_grace_s": 3})  # the stuck rank never checkpoints: no 30 s wait for it
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", 2)
    # Rank 1 hangs at its third step, rank 0 waits for it. A Ctrl-C before then (a fixed sleep on a
    # loaded machine) is agreed at a step boundary and rightly checkpointed.
    wait_for(lambda: hung.exists(), "rank 1 to hang", 180)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    line = stderr.strip().splitlines()[-1]
    assert proc.returncode == 130
    assert line == "gpujob: stopped by SIGINT before the first checkpoint: nothing was kept", line
    assert not run.exists()  # and nothing half-made is left behind


def test_ctrl_c_in_the_first_seconds_leaves_no_folder_and_no_resume_hint(digits, tmp_path):
    runs = tmp_path / "runs"
    proc = _start("submit", digits(resources={"processes": 2}), "--runs-dir", runs)
    wait_for(lambda: runs.exists() and any(runs.iterdir()), "the run folder")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "gpujob resume" not in stderr, stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_a_node_waiting_for_its_peers_says_so_and_claims_nothing_on_ctrl_c(digits, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    node0 = _start("run", digits(), "--nnodes", 2, "--node-rank", 0, "--master-addr", "127.0.0.1",
                   "--master-port", port, "--runs-dir", tmp_path / "runs")
    said = []
    wait_for(lambda: said.append(node0.stderr.readline()) or "waiting for" in said[-1], "the waiting line", 60)
    node0.send_signal(signal.SIGINT)
    _, rest = node0.communicate(timeout=120)
    stderr = "".join(said) + rest
    waiting = [line for line in stderr.splitlines() if "waiting for" in line]
    assert waiting and waiting[0].startswith("gpujob: node 0 of 2 waiting for the other 1 node(s) to join at "
                                             f"127.0.0.1:{port}, 1"), stderr
    last = stderr.strip().splitlines()[-1]
    assert node0.returncode == 130 and "nothing was kept" in last and "checkpointed" not in last, stderr


def test_timeout_minutes_stops_a_single_worker_run(digits, tmp_path):
    started = time.monotonic()
    out = cli_subprocess("run", digits(train={"epochs": 1000}, resources={"timeout_minutes": 0.15}),
                         "--run-dir", tmp_path / "run")
    assert out.returncode == 1, out.stderr
    assert "ran past resources.timeout_minutes (0.15 min)" in out.stderr and "checkpoint saved" in out.stderr
    assert 9 <= time.monotonic() - started < 60
    assert list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
