"""backend: slurm against a real one-node SLURM cluster (.ci/start-slurm.sh makes one here).

The script tests need no cluster; the job tests submit through `gpujob submit --backend slurm`
and skip, saying why, where SLURM is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backends.slurm.script import sbatch_script
from runner.checkpoint import CheckpointStore
from runner.spec import load_spec
from tests.conftest import REPO, assert_golden, cli, cli_subprocess, read_jsonl, read_jsonl_if, wait_for


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM controller that answers; started with .ci/start-slurm.sh when it is installed but down."""
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed here (sbatch not found); .ci/start-slurm.sh installs and starts it")

    def up() -> bool:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        return "UP" in ping.stdout

    if not up():
        if os.geteuid() != 0:
            pytest.skip("SLURM is installed but its controller is down, and starting it needs root")
        started = subprocess.run(["bash", str(REPO / ".ci/start-slurm.sh")], capture_output=True, text=True,
                                 timeout=300)
        assert started.returncode == 0 and up(), f"could not start SLURM:\n{started.stderr[-2000:]}"


def _submit_in_background(spec: Path, runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "submit", str(spec), "--backend", "slurm",
                             "--runs-dir", str(runs)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_metrics(runs: Path, containing: str = "", timeout_s: float = 120) -> None:
    """Until a run folder under `runs` has a metrics.jsonl holding `containing` (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(
            containing in (run / "metrics.jsonl").read_text()
            for run in runs.glob("*") if (run / "metrics.jsonl").exists()):
        time.sleep(0.2)


def _options(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_the_batch_script_asks_slurm_for_what_the_spec_says(write_spec, tmp_path):
    spec = load_spec(write_spec(
        resources={"gpu": "A100:4", "nodes": 2, "timeout_minutes": 90},
        slurm={"partition": "gpu", "account": "lab", "qos": "high", "cpus_per_task": 8, "mem": "64G",
               "gres_type": "a100", "sbatch_lines": ["--constraint=ib"], "setup": ["module load cuda/12"]}))
    script = sbatch_script(spec, tmp_path / "run", "/opt/py/bin/python", tmp_path)
    options = _options(script)
    for expected in ("--nodes=2", "--ntasks-per-node=4", "--time=90", "--gres=gpu:a100:4", "--partition=gpu",
                     "--account=lab", "--qos=high", "--cpus-per-task=8", "--mem=64G", "--constraint=ib",
                     "--requeue", f"--chdir={tmp_path}", f"--output={tmp_path}/run/job/slurm-%j.out"):
        assert expected in options
    body = script.split("\n\n", 1)[1]
    assert body.index("module load cuda/12") < body.index("srun")
    assert "srun --kill-on-bad-exit=1" in body and "RANK=$SLURM_PROCID" in body
    assert f"/opt/py/bin/python -m runner.cli run {tmp_path}/run/job/spec.yaml --run-dir {tmp_path}/run " \
           "--worker --resume" in body


def test_a_cpu_job_asks_for_one_task_per_process_and_no_gpus(write_spec, tmp_path):
    spec = load_spec(write_spec(resources={"processes": 3}, data={"batch_size": 129}))
    options = _options(sbatch_script(spec, tmp_path / "run", sys.executable, tmp_path))
    assert "--ntasks-per-node=3" in options and "--nodes=1" in options
    assert not any(option.startswith("--gres") for option in options)


def test_dry_run_prints_the_batch_script_and_submits_nothing(fashion_spec, tmp_path):
    result = cli("submit", fashion_spec(resources={"processes": 2}), "--backend", "slurm", "--dry-run",
                 "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert "#SBATCH --ntasks-per-node=2" in result.stdout and "nothing was submitted" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_without_slurm_commands_it_exits_3_and_says_what_to_do(fashion_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = cli("submit", fashion_spec(), "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 3
    assert "not found" in result.stderr and "login node" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_dead_controller_exits_3_at_once(fashion_spec, tmp_path, slurm_cluster):
    # The same cluster's config, but its controller at a port where nothing listens.
    conf = Path("/etc/slurm/slurm.conf").read_text()
    (tmp_path / "slurm.conf").write_text(conf + "\nSlurmctldPort=9\n")
    start = time.monotonic()
    out = cli_subprocess("submit", fashion_spec(), "--backend", "slurm", "--runs-dir", tmp_path / "runs",
                         env={"SLURM_CONF": str(tmp_path / "slurm.conf")}, timeout=120)
    assert out.returncode == 3, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2 and "controller" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - start < 90
    assert not (tmp_path / "runs").exists()


def test_two_tasks_on_slurm_train_like_two_local_workers(fashion_spec, tmp_path, slurm_cluster):
    spec = fashion_spec(resources={"processes": 2}, train={"epochs": 2, "log_every_steps": 10})
    local = cli("submit", spec, "--runs-dir", tmp_path / "local")
    assert local.exit_code == 0, local.stderr
    on_slurm = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "slurm")
    assert on_slurm.exit_code == 0, on_slurm.stderr
    run = on_slurm.run_dir
    for name in ("spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json",
                 "job/job.sbatch"):
        assert (run / name).is_file(), name
    summary = (run / "summary.json").read_text()
    assert '"world_size": 2' in summary
    ours, theirs = read_jsonl(run / "metrics.jsonl"), read_jsonl(local.run_dir / "metrics.jsonl")
    assert [(m["kind"], m["step"]) for m in ours] == [(m["kind"], m["step"]) for m in theirs]
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert os.stat(run / "summary.json").st_mode & 0o044 == 0o044, "readable by the user's other tools"


def test_a_refused_request_names_the_field_and_leaves_nothing(fashion_spec, tmp_path, slurm_cluster):
    result = cli("submit", fashion_spec(slurm={"partition": "no-such-partition"}), "--backend", "slurm",
                 "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.startswith("gpujob: slurm.partition: sbatch refused the job")
    assert not (tmp_path / "runs").exists()


def test_a_failing_rank_fails_the_slurm_job_with_its_error(write_spec, tmp_path, slurm_cluster):
    spec = write_spec(model={"name": "tests.plugins:saboteur", "args": {"rank": 1, "mode": "raise", "at_step": 3}},
                      data={"dataset": "digits", "batch_size": 32}, resources={"processes": 2},
                      train={"epochs": 1})
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert "planted failure at step 3" in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "summary.json").exists()
    leftover = subprocess.run(["pgrep", "-f", f"--run-dir {run}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_ctrl_c_checkpoints_cancels_the_job_and_resume_finishes_it(fashion_spec, tmp_path, slurm_cluster):
    spec = fashion_spec(resources={"processes": 2}, train={"epochs": 30, "log_every_steps": 5})
    proc = _submit_in_background(spec, tmp_path / "runs")
    _wait_for_metrics(tmp_path / "runs")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert f"gpujob resume {run}" in stderr
    assert CheckpointStore(run).paths(), "the workers checkpointed before the job was cancelled"
    squeue = subprocess.run(["squeue", "-h", "-n", "gpujob-test-job"], capture_output=True, text=True)
    assert squeue.stdout.strip() == ""
    resumed = cli("resume", run)  # submitted to SLURM again, not run on this (login) node
    assert resumed.exit_code == 0, resumed.stderr
    assert "submitted SLURM job" in resumed.stderr
    assert len(list((run / "job").glob("slurm-*.out"))) == 2
    assert '"resumed": 1' in (run / "summary.json").read_text()


def test_a_requeued_job_resumes_from_its_checkpoint_into_the_same_folder(write_spec, tmp_path, slurm_cluster):
    """What SLURM does to a preempted job: stop it (SIGTERM), put it back in the queue, start it again."""
    spec = write_spec(name="requeue-test", model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                      optimizer={"name": "sgd", "lr": 0.05}, resources={"processes": 2},
                      train={"epochs": 40, "log_every_steps": 20})
    proc = _submit_in_background(spec, tmp_path / "runs")
    _wait_for_metrics(tmp_path / "runs", containing='"kind": "epoch"')
    job_id = subprocess.run(["squeue", "-h", "-n", "gpujob-requeue-test", "-o", "%i"], capture_output=True,
                            text=True).stdout.strip()
    assert job_id, "the job is running"
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # A requeued job waits two minutes before it may start again; a test need not.
    for _ in range(100):
        if "PENDING" in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout:
            break
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert stdout.strip().splitlines()[-1] == str(run)
    assert "checkpoint saved" in stdout + stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["epochs"] == 40
    steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "step"]
    assert steps == sorted(set(steps)) and len(steps) == 40 * 44 // 20


def test_a_runs_dir_the_nodes_do_not_share_is_named_in_the_error(write_spec, tmp_path, slurm_cluster):
    # Stand-in for a cluster whose nodes cannot see --runs-dir: SLURM's output goes elsewhere.
    spec = write_spec(data={"dataset": "digits", "batch_size": 64}, train={"epochs": 1},
                      slurm={"sbatch_lines": [f"--output={tmp_path}/elsewhere-%j.out"]})
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert "must be on a file system the compute nodes share" in result.stderr


def test_the_batch_script_sent_is_the_recorded_one(write_spec):
    """Golden file: a change to what is sent to SLURM shows in review."""
    spec = load_spec(write_spec(resources={"gpu": "A100:4", "nodes": 2, "timeout_minutes": 90},
                                slurm={"partition": "gpu", "account": "lab", "gres_type": "a100", "mem": "64G",
                                       "cpus_per_task": 8, "setup": ["module load cuda"]}))
    script = sbatch_script(spec, Path("/shared/runs/golden-20260101-000000"), "/opt/venv/bin/python",
                           Path("/shared/project"))
    assert_golden("slurm_job.sbatch", script)


# ---- the lifecycle -------------------------------------------------------------------


def test_detach_status_logs_cancel_and_resume_on_slurm(write_spec, tmp_path, slurm_cluster):
    runs = tmp_path / "runs"
    spec = write_spec(name="lifecycle", model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                      optimizer={"name": "sgd", "lr": 0.05}, resources={"processes": 2},
                      train={"epochs": 40, "max_steps": 600, "log_every_steps": 10})
    submitted = cli("submit", spec, "--backend", "slurm", "--detach", "--runs-dir", runs)
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir.resolve()
    job_id = json.loads((run / "submission.json").read_text())["handles"]["slurm_job_id"]
    assert f"submitted SLURM job {job_id}" in submitted.stderr
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 3, "the SLURM job's steps")
    assert cli("status", run).stdout.startswith(f"{run.name}: running: SLURM job {job_id}")
    logs = cli("logs", run).stdout
    assert "step 10/600" in logs and "training on cpu x2" in logs
    refused = cli("resume", run)
    assert refused.exit_code == 2 and "is still running" in refused.stderr  # never a second copy of a live job

    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and f"SLURM job {job_id}" in cancelled.stdout, cancelled.stderr
    assert CheckpointStore(run).paths(), "the workers checkpointed before the job was cancelled"
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")
    kept = [m["step"] for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "step"]

    resumed = cli("resume", run, "--detach")
    assert resumed.exit_code == 0, resumed.stderr
    new_id = json.loads((run / "submission.json").read_text())["handles"]["slurm_job_id"]
    assert new_id != job_id
    followed = cli_subprocess("logs", run, "--follow", timeout=600)
    assert followed.returncode == 0 and "step 600/600" in followed.stdout
    assert cli("status", run).stdout.startswith(f"{run.name}: finished")
    steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[: len(kept)] == kept and steps[-1] == 600
    listed = json.loads(cli("runs", "--runs-dir", runs, "--json").stdout)
    assert [(r["backend"], r["state"]) for r in listed] == [("slurm", "finished")]
