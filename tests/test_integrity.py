"""Never lose a run, second pass (issue 23): each case as a hostile user or an unlucky machine
produced it, kept as the test that failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_subprocess, image, read_jsonl_if, wait_for  # noqa: F401 (image: a fixture)


def _start(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


LATE_BAD = dict(model={"name": "mlp", "num_classes": 10},
                data={"dataset": "tests.integrity_plugins:latebad", "batch_size": 32, "num_workers": 0},
                train={"epochs": 3, "log_every_steps": 2, "checkpoint_every_minutes": 0})


@pytest.mark.parametrize("workers", [1, 2])
def test_a_spec_error_found_mid_run_keeps_what_was_trained(write_spec, tmp_path, workers):
    """A label past num_classes drawn only in a later step: exit 2, one line, and the run keeps
    its spec, metrics and checkpoints, whatever the worker count (2 workers deleted them)."""
    spec = write_spec(**LATE_BAD, resources={"processes": workers})
    out = cli_subprocess("submit", spec, "--runs-dir", tmp_path / "runs", timeout=300)
    assert out.returncode == 2, out.stderr
    assert "label past it" in out.stderr and "Traceback" not in out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert {"spec.yaml", "metrics.jsonl", "checkpoints", "env.json"} <= _names(run), _names(run)
    assert read_jsonl_if(run / "metrics.jsonl"), "the steps before the bad batch were recorded"
    assert list((run / "checkpoints").glob("step-*.pt"))
    # resume finds the run (and stops at the same bad batch: the data is wrong, not the run)
    resumed = cli_subprocess("resume", run, timeout=300)
    assert resumed.returncode == 2 and "never started" not in resumed.stderr, resumed.stderr
    assert "resuming from step" in resumed.stderr


QUICK = dict(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
             optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
             train={"epochs": 3, "log_every_steps": 5, "checkpoint_every_minutes": 0, "seed": 1})


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl_if(run / "metrics.jsonl") if r["kind"] == "step"]


def test_deleting_the_lock_of_a_live_run_does_not_let_a_second_trainer_in(write_spec, tmp_path):
    spec = write_spec(**{**QUICK, "train": {**QUICK["train"], "epochs": 40}})
    runs = tmp_path / "runs"
    out = cli_subprocess("submit", spec, "--runs-dir", runs, "--detach")
    assert out.returncode == 0, out.stderr
    run = Path(out.stdout.strip().splitlines()[-1])
    try:
        wait_for(lambda: len(_steps(run)) >= 2, "the detached run's first steps")
        (run / ".lock").unlink()
        status = cli_subprocess("status", run)
        assert status.returncode == 0 and ": running" in status.stdout, status.stdout
        resumed = cli_subprocess("resume", run)
        assert resumed.returncode == 2 and "still running" in resumed.stderr, resumed.stderr
        assert "starting over" not in resumed.stderr
        # the same with `gpujob run --resume` into the folder, as a backend would start it
        again = cli_subprocess("run", run / "spec.yaml", "--run-dir", run, "--resume")
        assert again.returncode == 2 and "is live" in again.stderr, again.stderr
    finally:
        cancelled = cli_subprocess("cancel", run)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    steps = _steps(run)
    assert steps == sorted(set(steps)), f"a step was logged twice: {steps}"


def test_a_lock_that_is_a_folder_is_one_line(write_spec, tmp_path):
    run = tmp_path / "run"
    assert cli_subprocess("run", write_spec(**QUICK), "--run-dir", run, "--set", "train.epochs=1").returncode == 0
    (run / "summary.json").unlink()
    (run / ".lock").unlink()
    (run / ".lock").mkdir()
    out = cli_subprocess("resume", run)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and ".lock" in out.stderr, out.stderr


def _factory_spec(write_spec, dataset: str, **train):
    return write_spec(model={"name": "mlp", "num_classes": 10},
                      data={"dataset": f"tests.integrity_plugins:{dataset}", "batch_size": 32, "num_workers": 0},
                      train={"epochs": 2, **train})


@pytest.mark.parametrize("dataset, said", [("exits_zero", "sys.exit(0)"), ("exits_hard", "exit code 7")])
def test_a_job_that_ends_itself_early_never_exits_0_and_says_what_ended_it(write_spec, tmp_path, dataset, said):
    out = cli_subprocess("submit", _factory_spec(write_spec, dataset), "--runs-dir", tmp_path / "runs")
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert said in out.stderr and "Traceback" not in out.stderr, out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    status = cli_subprocess("status", run)
    assert "failed" in status.stdout, status.stdout


@pytest.mark.parametrize("how", ["timeout", signal.SIGTERM, signal.SIGINT])
def test_one_worker_blocked_in_its_factory_honours_the_time_limit_and_signals(write_spec, tmp_path, how):
    """A dataset factory that never returns: the time limit, Ctrl-C and SIGTERM still end the job
    (within the stop grace, as the launcher does for several), and it says so."""
    grace = 3
    spec = _factory_spec(write_spec, "sleeps_forever", stop_grace_s=grace)
    timeout_min = 0.1 if how == "timeout" else 5
    began = time.monotonic()
    proc = _start("submit", spec, "--runs-dir", tmp_path / "runs", "--set", f"resources.timeout_minutes={timeout_min}")
    if how != "timeout":
        time.sleep(3)  # in the factory by now, or about to be: either way the signal must end it
        proc.send_signal(how)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - began
    expected = {"timeout": 1, signal.SIGTERM: 143, signal.SIGINT: 130}[how]
    assert proc.returncode == expected, (proc.returncode, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gpujob: "), err
    assert ("resources.timeout_minutes" if how == "timeout" else "nothing was kept") in err, err
    limit = (6 if how == "timeout" else 3) + grace
    assert took < limit + 30, f"took {took:.0f} s, past the limit and the grace ({limit} s) by far"
    assert not list((tmp_path / "runs").glob("*/checkpoints"))


def test_checkpoints_without_their_checksum_files_are_used_when_they_load(write_spec, tmp_path):
    run = tmp_path / "run"
    spec = write_spec(**QUICK)
    proc = _start("run", spec, "--run-dir", run, "--set", "train.epochs=8")
    wait_for(lambda: any(r["kind"] == "epoch" for r in read_jsonl_if(run / "metrics.jsonl")), "an epoch")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    for digest in (run / "checkpoints").glob("*.sha256"):
        digest.unlink()
    newest, older = sorted((run / "checkpoints").glob("step-*.pt"), reverse=True)
    newest.write_bytes(newest.read_bytes()[:1000])  # and the newest cut short: that one is damaged
    resumed = cli_subprocess("resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{newest} does not load" in resumed.stderr and "falling back" in resumed.stderr
    assert f"checkpoint {older.name} has no checksum file" in resumed.stderr
    assert f"resuming from step {int(older.stem.split('-')[1])}" in resumed.stderr


def test_a_ddp_stop_is_agreed_within_the_grace_even_when_ten_steps_outlast_it(write_spec, tmp_path):
    """Steps of about 1.5 s on 2 workers and a 6 s grace: ranks that agreed to stop only every
    10 steps were killed before they could; a stop must end with a checkpoint."""
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.integrity_plugins:slow", "batch_size": 32, "num_workers": 0,
                            "args": {"samples": 640, "delay_s": 0.09}},
                      train={"epochs": 1, "log_every_steps": 1, "checkpoint_every_minutes": 60, "stop_grace_s": 6},
                      resources={"processes": 2})
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", "2")
    wait_for(lambda: len(_steps(run)) >= 3 or proc.poll() is not None, "three steps", timeout=300)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "nothing was kept" not in err and "last checkpoint step-" in err, err
    assert list((run / "checkpoints").glob("step-*.pt"))


def test_a_resumed_run_times_each_attempt_on_its_own_clock(write_spec, tmp_path):
    """A slow first start (6 s) and a quick resume: the timing must not set the first attempt's
    start-up against the second's length (the diagnosis once said 20.6 s of a 14.7 s job)."""
    (tmp_path / "data").mkdir()
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.integrity_plugins:slow_first_load", "root": str(tmp_path / "data"),
                            "batch_size": 16, "num_workers": 0},
                      train={"epochs": 2, "log_every_steps": 10, "checkpoint_every_minutes": 0})
    run = tmp_path / "run"
    proc = _start("run", spec, "--run-dir", run)
    wait_for(lambda: any(r["kind"] == "epoch" for r in read_jsonl_if(run / "metrics.jsonl")), "the first epoch")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert cli_subprocess("resume", run).returncode == 0
    timing = json.loads((run / "timing.json").read_text())
    assert timing["time_to_first_step_s"] <= timing["total_s"], timing
    first, second = timing["attempts"]
    assert first["time_to_first_step_s"] > 6 and second["time_to_first_step_s"] < first["time_to_first_step_s"]
    for attempt in (first, second):
        assert attempt["time_to_first_step_s"] <= attempt["total_s"]
    assert timing["whole_s"] == pytest.approx(first["total_s"] + second["total_s"])
    import re

    for finding in json.loads((run / "summary.json").read_text())["diagnosis"]:
        said = re.match(r"([\d.]+) s of the job's ([\d.]+) s", finding["evidence"])
        if finding["kind"] == "start-up-bound" and said:
            assert float(said[1]) <= float(said[2]), finding


def test_ctrl_c_while_the_run_folder_is_made_leaves_no_folder_that_is_not_a_run(tmp_path, monkeypatch):
    """The window between the folder's mkdir and its record's write (2 of 3 tries once left an
    empty folder, which gpujob then refused as not a run)."""
    from runner.runs import record as run_record
    from runner.runs.folder import RunFolder

    def interrupted(folder, submission):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_record, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        RunFolder.start(tmp_path / "runs" / "job-1", run_record.new_submission("local", "job-1"))
    assert not (tmp_path / "runs" / "job-1").exists()


def test_ctrl_c_at_any_moment_of_a_submit_leaves_only_runs(tmp_path):
    """SIGINT at moments spread over a quickstart's start: every folder left is a whole run (its
    record first), and the command ends in one line, exit 130."""
    runs = tmp_path / "runs"
    for delay in (0.4, 0.7, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0):
        proc = _start("submit", REPO / "jobs" / "quickstart.yaml", "--runs-dir", runs)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 130), (delay, proc.returncode, err)
        assert "Traceback" not in err, (delay, err)
        for folder in runs.iterdir() if runs.exists() else []:
            assert (folder / "submission.json").is_file(), (delay, _names(folder))


def test_a_refused_resume_changes_nothing(write_spec, tmp_path):
    run = tmp_path / "run"
    proc = _start("run", write_spec(**QUICK), "--run-dir", run, "--set", "train.epochs=8", "--set",
                  "data.batch_size=64")
    wait_for(lambda: len(_steps(run)) >= 2, "two steps")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143

    def files():
        return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    before = files()
    out = cli_subprocess("resume", run, "--nproc-per-node", "3")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--nproc-per-node" in out.stderr, out.stderr
    assert files() == before


def test_in_docker_a_spec_error_found_mid_run_keeps_what_was_trained(image, write_spec, tmp_path):
    spec = write_spec(**LATE_BAD, resources={"processes": 2}, docker={"image": image})
    out = cli_subprocess("submit", spec, "--backend", "docker", "--runs-dir", tmp_path / "runs", timeout=600)
    assert out.returncode == 2, out.stdout + out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert {"spec.yaml", "metrics.jsonl", "checkpoints"} <= _names(run), _names(run)


def test_a_run_folder_made_unwritable_mid_run_keeps_what_was_trained(write_spec, tmp_path):
    """`chattr +i RUN/checkpoints` while 2 workers train: exit 2 naming the folder, and the run's
    metrics, spec and environment stay (they were taken away with it)."""
    run = tmp_path / "run"
    spec = write_spec(**{**QUICK, "train": {**QUICK["train"], "epochs": 40}}, resources={"processes": 2})
    proc = _start("run", spec, "--run-dir", run, "--nproc-per-node", "2")
    checkpoints = run / "checkpoints"
    try:
        wait_for(lambda: any(checkpoints.glob("step-*.pt")) or proc.poll() is not None, "a checkpoint")
        subprocess.run(["chattr", "+i", checkpoints], check=True)
        _, err = proc.communicate(timeout=300)
    finally:
        subprocess.run(["chattr", "-i", checkpoints])
    assert proc.returncode == 2 and "gpujob must be able to write its run folder" in err, err
    assert {"spec.yaml", "metrics.jsonl", "env.json", "checkpoints"} <= _names(run), _names(run)


# ---- the words status uses (issue 29) --------------------------------------------------------


def _detached_run(write_spec, tmp_path, epochs: int = 40) -> Path:
    spec = write_spec(**{**QUICK, "train": {**QUICK["train"], "epochs": epochs}})
    out = cli_subprocess("submit", spec, "--runs-dir", tmp_path / "runs", "--detach")
    assert out.returncode == 0, out.stderr
    run = Path(out.stdout.strip().splitlines()[-1])
    wait_for(lambda: any((run / "checkpoints").glob("step-*.pt")), "a checkpoint")
    return run


def _trainer_pid(run: Path) -> int:
    return json.loads((run / "submission.json").read_text())["handles"]["trainer"]["pid"]


def _status_after(run: Path, signum: int, what: str, timeout: float) -> str:
    """`gpujob status` once the run's trainer, sent `signum`, has ended (its exit code recorded)."""
    os.kill(_trainer_pid(run), signum)
    wait_for(lambda: (run / "job" / "exit-code").exists(), what, timeout)
    return cli_subprocess("status", run).stdout


def test_a_run_killed_with_sigkill_says_so_with_its_checkpoint_and_how_to_resume(write_spec, tmp_path):
    """It said "failed: exit 137", with no checkpoint and no resume hint."""
    run = _detached_run(write_spec, tmp_path)
    said = _status_after(run, signal.SIGKILL, "the wrapper to record the exit code", 60)
    assert said.startswith(f"{run.name}: preempted: killed by SIGKILL (exit 137), not by gpujob"), said
    assert "last checkpoint step-" in said and f"gpujob resume {run}" in said


def test_ctrl_c_is_a_cancel_said_once_not_a_preemption(write_spec, tmp_path):
    run = _detached_run(write_spec, tmp_path)
    said = _status_after(run, signal.SIGINT, "the job to stop", 120)
    assert said.startswith(f"{run.name}: cancelled: stopped by Ctrl-C; last checkpoint"), said
    assert cli_subprocess("resume", run, "--detach").returncode == 0
    cancelled = cli_subprocess("cancel", run)
    assert cancelled.returncode == 0, cancelled.stderr
    said = cli_subprocess("status", run).stdout
    assert said.startswith(f"{run.name}: cancelled: by `gpujob cancel`;") and "cancelled: cancelled" not in said, said


def test_a_refused_resume_prints_no_run_folder(write_spec, tmp_path):
    run = _detached_run(write_spec, tmp_path)
    try:
        refused = cli_subprocess("resume", run)
        assert refused.returncode == 2 and refused.stdout == "", (refused.stdout, refused.stderr)
    finally:
        cli_subprocess("cancel", run)


def test_a_stop_signal_that_comes_after_every_worker_finished_is_not_a_stop(write_spec):
    """Seen in CI on a Modal chain: the call's handover timer sent its SIGTERM as the job's only
    worker was exiting 0, finished; the launcher, which noted the signal first, reported the job
    stopped, the call handed over, and the next call (a container, billed) found nothing to do.
    A finished job is finished, whenever a stop signal comes after it."""
    from runner.launching.launcher import Launch
    from runner.launching.topology import Topology
    from runner.spec.load import load_spec

    launch = Launch(load_spec(write_spec(data={"dataset": "digits"})), Topology(1), None)
    launch.procs = [subprocess.Popen(["true"])]
    launch.procs[0].wait()
    launch.stop_signal = signal.SIGTERM  # noted while the worker was exiting 0
    launch.watch(timeout_s=60)  # returns: the job finished
    launch.cleanup()
