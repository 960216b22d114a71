"""backend: slurm against a real one-node SLURM cluster (.ci/start-slurm.sh makes one here).

The script tests need no cluster; the job tests submit through `gpujob submit --backend slurm`
and skip, saying why, where SLURM is not installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from runner.backends.slurm.commands import FINAL_STATES
from runner.backends.slurm.script import sbatch_script
from runner.training.checkpoint import CheckpointStore
from runner.runs.record import read as read_record
from runner.spec.load import load_spec
from tests.conftest import (REPO, assert_golden, cli, cli_subprocess, read_jsonl, read_jsonl_if, requeue_now,
                            start_if_down, wait_for)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM controller that answers; started with .ci/start-slurm.sh when it is installed but down."""
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed here (sbatch not found); .ci/start-slurm.sh installs and starts it")

    def up() -> bool:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        return "UP" in ping.stdout

    start_if_down(up, "start-slurm.sh", "SLURM is installed but its controller is down, and starting it")


def _submit_in_background(spec: Path, runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "submit", str(spec), "--backend", "slurm",
                             "--runs-dir", str(runs)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _steps(run: Path) -> list[int]:
    return [m["step"] for m in read_jsonl_if(run / "metrics.jsonl") if m["kind"] == "step"]


def _only_run(runs: Path, proc: subprocess.Popen) -> Path:
    """The one run folder under `runs`, once the submit running as `proc` has made it."""
    wait_for(lambda: (runs.is_dir() and any(runs.iterdir())) or proc.poll() is not None, f"a run folder under {runs}")
    assert runs.is_dir(), f"the submit ended without a run folder:\n{proc.stderr.read()[-2000:]}"
    (run,) = runs.iterdir()
    return run.resolve()


def _job_state(job_id: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    return next((item.split("=", 1)[1] for item in shown.split() if item.startswith("JobState=")), "")


# ---- a preemptible job and the same job never stopped --------------------------------------

# 20 epochs of 44 steps: long enough that a stop after the first steps lands mid-run, even on a
# loaded machine, and short enough to run three times. Momentum and a schedule: a resume must
# restore the optimizer's state and the schedule's place too.
PREEMPTIBLE = dict(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                   optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
                   resources={"processes": 2}, train={"epochs": 20, "log_every_steps": 20})
TIMING_ONLY = {"samples_per_s", "wall_s"}


def _curve(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in m.items() if k not in TIMING_ONLY} for m in read_jsonl(run / "metrics.jsonl")]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """PREEMPTIBLE run from start to end by 2 local workers: what a stopped and resumed copy must
    equal, bit for bit. SLURM's tasks get one thread each (OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK,
    default 1), so these do too: 2 gloo workers of one thread each train alike wherever they run."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    (folder / "job.yaml").write_text(yaml.safe_dump({"name": "uninterrupted", **PREEMPTIBLE}, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        result = cli("submit", folder / "job.yaml", "--runs-dir", folder / "runs")
    assert result.exit_code == 0, result.stderr
    return result.run_dir


def _assert_trained_like(run: Path, reference: Path) -> None:
    assert _curve(run) == _curve(reference), "the resumed run's metrics differ from the uninterrupted run's"
    assert _same_weights(run, reference), "the resumed run's final weights differ from the uninterrupted run's"


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
                     "--requeue", f"--chdir={tmp_path}", f"--output={tmp_path}/run/job/slurm-%j.out",
                     "--signal=ALRM@120"):
        assert expected in options
    body = script.split("\n\n", 1)[1]
    assert body.index("module load cuda/12") < body.index("srun")
    # srun (SLURM 22.05 and later) takes the tasks' CPUs from SRUN_CPUS_PER_TASK, not from sbatch
    assert body.index("export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK") < body.index("srun")
    assert "srun --kill-on-bad-exit=1" in body and "RANK=$SLURM_PROCID" in body
    assert f"/opt/py/bin/python -m runner.cli run {tmp_path}/run/job/spec.yaml --run-dir {tmp_path}/run " \
           "--worker --resume" in body


@pytest.mark.parametrize("timeout_minutes, stop_grace_s, seconds_before_the_limit", [
    (90, 30, 120),   # a tenth of the limit, at most 2 minutes
    (5, 30, 30),     # at least the time the workers have to checkpoint
    (5, 20, 30),     # a tenth of the limit
    (1, 5, 10),      # never under 10 s
    (600, 300, 300),  # a long checkpoint gets its time
])
def test_the_workers_get_the_time_limits_signal_before_it_in_time_to_checkpoint(
        write_spec, tmp_path, timeout_minutes, stop_grace_s, seconds_before_the_limit):
    """SIGALRM, the workers' own time-limit signal: SIGTERM would read as a preemption."""
    spec = load_spec(write_spec(resources={"timeout_minutes": timeout_minutes},
                                train={"stop_grace_s": stop_grace_s}))
    options = _options(sbatch_script(spec, tmp_path / "run", sys.executable, tmp_path))
    assert [o for o in options if o.startswith("--signal")] == [f"--signal=ALRM@{seconds_before_the_limit}"]
    assert f"--time={timeout_minutes}" in options


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


def test_a_runs_dir_a_batch_script_cannot_name_is_one_line_exit_2(fashion_spec, tmp_path):
    """A backslash would turn off --output's %j (the job's output could not be found), a newline
    would end the #SBATCH line: refused before anything is written or submitted."""
    runs = tmp_path / "back\\slash"
    result = cli("submit", fashion_spec(), "--backend", "slurm", "--dry-run", "--runs-dir", runs)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"gpujob: --runs-dir: {str(runs.resolve())!r} holds a newline or a backslash, "
        "which a SLURM batch script cannot carry in its #SBATCH lines; use a folder without them"]
    assert not runs.exists()


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


# SLURM's commands as a cluster answers them; FAKE_HANG=ping|show|sbatch: that command does not
# answer (for 30 s: a test of a broken timeout fails, it does not hang).
FAKE_SCONTROL = """#!/bin/sh
case "$1" in
  ping) [ "$FAKE_HANG" = ping ] && exec sleep 30
        echo "Slurmctld(primary) at fake is UP";;
  show) [ "$FAKE_HANG" = show ] && exec sleep 30
        echo "JobId=4242 JobName=gpujob-test-job JobState=${FAKE_STATE:-RUNNING} Reason=None Restarts=0";;
esac
"""
# FAKE_JOB_FILES: a folder of what the job wrote into the run's job/ (copied there on submit).
# FAKE_SENT: a file each submitted script is appended to.
FAKE_SBATCH = """#!/bin/sh
[ "$FAKE_HANG" = sbatch ] && exec sleep 30
[ -n "$FAKE_SENT" ] && cat "$2" >> "$FAKE_SENT"
[ -n "$FAKE_JOB_FILES" ] && cp "$FAKE_JOB_FILES"/* "$(dirname "$2")"/
echo 4242
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """SLURM's client commands first on PATH, answering as FAKE_HANG and FAKE_STATE say."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH), ("scancel", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


@pytest.mark.parametrize("silent, what", [("ping", "checking the controller"), ("sbatch", "submitting the job"),
                                          ("show", "following the job")])
def test_a_controller_that_never_answers_is_exit_3_within_the_command_timeout(fashion_spec, tmp_path, fake_slurm,
                                                                            silent, what):
    """A controller that takes the connection and never answers, at each step of a submit: every
    SLURM command runs under COMMAND_TIMEOUT_S (30 s, 1 s here), and gpujob stops at once."""
    fake_slurm.setenv("FAKE_HANG", silent)
    fake_slurm.setattr("runner.backends.slurm.commands.COMMAND_TIMEOUT_S", 1)
    start = time.monotonic()
    result = cli("submit", fashion_spec(), "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert time.monotonic() - start < 20
    assert result.exit_code == 3, result.stderr
    command = "sbatch" if silent == "sbatch" else "scontrol"
    said = result.stderr.strip().splitlines()
    assert said[-1] == (f"gpujob: slurm: the SLURM controller did not answer `{command}` within 1 s while {what}; "
                        "check `scontrol ping`")
    runs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
    if silent == "show":  # the job was submitted: its folder is the handle on it, and the last line
        assert said[0].startswith("gpujob: submitted SLURM job 4242") and len(said) == 2
        assert [Path(result.stdout.strip().splitlines()[-1])] == runs
        assert read_record(runs[0]).handles == {"slurm_job_id": "4242"}
    else:  # nothing was submitted: one line, nothing left behind
        assert len(said) == 1 and runs == [] and result.stdout == ""


def test_a_job_slurm_stopped_at_its_time_limit_is_exit_1_naming_the_limit(fashion_spec, tmp_path, fake_slurm):
    """What gpujob does when SLURM reports TIMEOUT (a real one would take minutes: --time is whole minutes)."""
    fake_slurm.setenv("FAKE_STATE", "TIMEOUT")
    result = cli("submit", fashion_spec(resources={"timeout_minutes": 2}), "--backend", "slurm",
                 "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stderr.strip().splitlines()[-1] == (
        "gpujob: slurm: job 4242 ran past resources.timeout_minutes (2 min) and was stopped; no checkpoint was "
        "written; `gpujob resume` would start it over")  # the fake job wrote none: no checkpoint is claimed
    assert result.stdout.strip().splitlines()[-1] == str(run)


def test_resume_submits_the_recorded_batch_script_again(fashion_spec, tmp_path, fake_slurm):
    """job/request.json holds the script exactly as sent (sbatch reads job/job.sbatch, the same
    text); resume submits that script again, not one planned anew from a spec since edited."""
    sent = tmp_path / "sent"
    fake_slurm.setenv("FAKE_SENT", str(sent))
    spec = fashion_spec()
    submitted = cli("submit", spec, "--backend", "slurm", "--detach", "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    script = json.loads((run / "job" / "request.json").read_text())["script"]
    assert script == (run / "job" / "job.sbatch").read_text() == sent.read_text()
    assert f"--run-dir {run} --worker --resume" in script

    fake_slurm.setenv("FAKE_STATE", "FAILED")  # the job ended: it may be resumed
    spec.write_text(spec.read_text().replace("test-job", "edited-since"))
    (run / "job" / "job.sbatch").write_text("#!/bin/bash\nexit 1\n")
    resumed = cli("resume", run, "--detach")
    assert resumed.exit_code == 0, resumed.stderr
    assert sent.read_text() == script + script and (run / "job" / "job.sbatch").read_text() == script


# What a two-node job wrote when node 2's worker was SIGKILLed mid-run (tests/test_multinode.py),
# as seen under load: srun's teardown SIGTERM reached rank 0 before it noticed its peer was gone,
# so rank 0 ended 143, and srun's exit was 143 too. Rank 0 had said it resumed ("gpujob: ...").
KILLED_ON_NODE_2 = {
    "slurm-4242.out": """0: gpujob: resuming from step 50 (checkpoint step-00000050.pt, written 2026-12-03 01:57:10)
0: gpujob-worker: joined the job (rank 0 of 2)
1: gpujob-worker: joined the job (rank 1 of 2)
0: step 60/300  epoch 2  loss 0.9638  lr 0.05  7868 samples/s
1: worker: line 1: 23255 Killed                  "$@"
srun: error: gpujob-node2: task 1: Exited with exit code 137
srun: launch/slurm: _step_signal: Terminating StepId=4242.0
0: slurmstepd-gpujob-node1: error: *** STEP 4242.0 ON gpujob-node1 CANCELLED AT 2026-12-03T01:57:19 ***
srun: error: gpujob-node1: task 0: Exited with exit code 143
""",
    "rank-0.exit": "143 gpujob-node1\n", "rank-1.exit": "137 gpujob-node2\n", "exit-code": "143\n"}
# Rank 1 failed with its own error; rank 0 then failed too: srun's teardown SIGTERM killed its
# DataLoader workers, an error that names no peer. Each task's line says when it ended.
FAILED_ON_RANK_1 = {
    "slurm-4242.out": """0: gpujob-worker: joined the job (rank 0 of 2)
1: gpujob-worker: joined the job (rank 1 of 2)
1: gpujob: job failed: ValueError: planted failure at step 3 (traceback in /runs/x/error.log)
srun: error: vm: task 1: Exited with exit code 1
srun: launch/slurm: _step_signal: Terminating StepId=4242.0
0: gpujob: job failed: RuntimeError: DataLoader worker (pid(s) 812) exited unexpectedly
srun: error: vm: task 0: Exited with exit code 1
""",
    "rank-0.exit": "1 vm 1796263246.912301 TERM,\n", "rank-1.exit": "1 vm 1796263246.401622 -\n",
    "exit-code": "1 0\n"}


@pytest.mark.parametrize("wrote, said", [
    (KILLED_ON_NODE_2, "rank 1 of 2 on node gpujob-node2 was killed by SIGKILL, not by gpujob"),
    (FAILED_ON_RANK_1, "rank 1 of 2 on node vm: the job failed (exit 1): job failed: ValueError: planted failure"),
], ids=["killed-then-srun-stopped-the-other", "failed-then-the-other-failed-too"])
def test_the_rank_that_failed_first_is_blamed_not_one_that_ended_after_it(fashion_spec, tmp_path, fake_slurm,
                                                                          wrote, said):
    """Which rank ended the job is decided by what happened first (a rank's own end, before srun's
    teardown), not by the rank numbers or by what a rank said before."""
    files = tmp_path / "wrote"
    files.mkdir()
    for name, text in wrote.items():
        (files / name).write_text(text)
    fake_slurm.setenv("FAKE_JOB_FILES", str(files))
    fake_slurm.setenv("FAKE_STATE", "FAILED")
    result = cli("submit", fashion_spec(resources={"processes": 2}), "--backend", "slurm",
                 "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    last = [line for line in result.stderr.splitlines() if line.startswith("gpujob: slurm job")]
    assert len(last) == 1 and last[0].startswith(f"gpujob: slurm job 4242: {said}"), result.stderr


def test_two_tasks_on_slurm_train_like_two_local_workers(fashion_spec, tmp_path, slurm_cluster):
    spec = fashion_spec(resources={"processes": 2}, train={"epochs": 2, "log_every_steps": 10})
    local = cli("submit", spec, "--runs-dir", tmp_path / "local")
    assert local.exit_code == 0, local.stderr
    on_slurm = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "slurm")
    assert on_slurm.exit_code == 0, on_slurm.stderr
    run = on_slurm.run_dir  # the last line of the output is the run folder
    assert run.is_dir() and run.parent.resolve() == (tmp_path / "slurm").resolve()
    # Rank 0's lines stream as they are, the other ranks' marked with their rank.
    shown = on_slurm.stdout.splitlines()
    assert "[rank 1] gpujob-worker: joined the job (rank 1 of 2)" in shown
    assert "gpujob-worker: joined the job (rank 0 of 2)" in shown and "training on cpu x2" in on_slurm.stdout
    assert not [line for line in shown if line.startswith(("0: ", "1: ", "[rank 0]"))]
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
    # The time in SLURM's queue, as this side saw it, before the job's own start-up phases.
    assert re.search(r"start-up .*queued \(SLURM\) [\d.]+ s, submitted to the job's start [\d.]+ s, imports",
                     cli("show", run).stdout)


def test_the_users_own_model_data_and_step_train_on_slurm_as_they_do_here(tmp_path, slurm_cluster):
    """The regression example, submitted from another folder: the job's tasks import the run's
    copy of the code (job/code, on the shared file system) and train as the local run does."""
    from tests.test_user_code import example

    spec = example(tmp_path, "regression", train={"epochs": 2}, resources={"processes": 2})
    local = cli("submit", spec, "--runs-dir", tmp_path / "local")
    assert local.exit_code == 0, local.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli_subprocess("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "slurm", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    run = Path(out.stdout.strip().splitlines()[-1])
    assert (run / "job" / "code" / "gpujob_examples" / "regression.py").is_file()
    assert f"export GPUJOB_CODE_PATHS={run / 'job' / 'code'}" in (run / "job" / "job.sbatch").read_text()
    ours, theirs = read_jsonl(run / "metrics.jsonl"), read_jsonl(local.run_dir / "metrics.jsonl")
    assert [(m["kind"], m["step"]) for m in ours] == [(m["kind"], m["step"]) for m in theirs]
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["metrics"]["mae"] == pytest.approx(b["metrics"]["mae"], rel=1e-6)


def test_code_the_nodes_could_not_import_is_refused_at_submit_not_after_the_queue(tmp_path, slurm_cluster):
    from tests.test_user_code import example

    spec = example(tmp_path, "regression")
    (spec.parent / "helpers.py").write_text("HIDDEN = 32\n")
    module = spec.parent / "gpujob_examples" / "regression.py"
    module.write_text("import helpers\n" + module.read_text())
    queued_before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    out = cli_subprocess("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "gpujob: model.name: gpujob_examples.regression does not import from the code shipped with the job "
        "(ModuleNotFoundError: No module named 'helpers')")
    assert "submitted SLURM job" not in out.stderr and not (tmp_path / "runs").exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == queued_before


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
    assert any(line.startswith("[rank 1] ") and "planted failure at step 3" in line
               for line in result.stdout.splitlines()), "the failing rank's own output, marked with its rank"
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.strip().splitlines()[-1] == str(run)  # the last line is the run folder, failed or not
    assert not (run / "summary.json").exists()
    leftover = subprocess.run(["pgrep", "-f", f"--run-dir {run}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def _interrupt_when(proc: subprocess.Popen, trained, what: str) -> tuple[str, str]:
    """Ctrl-C to an attached `gpujob` once trained() holds; its output, once it exited 130."""
    wait_for(lambda: trained() or proc.poll() is not None, what)
    assert proc.poll() is None, f"it ended before {what}:\n{proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    return stdout, stderr


def test_ctrl_c_checkpoints_cancels_the_job_and_resume_continues_it_to_the_uninterrupted_result(
        write_spec, tmp_path, slurm_cluster, uninterrupted, monkeypatch):
    """Ctrl-C, `gpujob resume` (on SLURM again), Ctrl-C again, then `gpujob resume --here`: the
    run ends with the metrics and weights of the same job never stopped."""
    spec = write_spec(**PREEMPTIBLE)
    runs = tmp_path / "runs"
    proc = _submit_in_background(spec, runs)
    run = _only_run(runs, proc)
    stdout, stderr = _interrupt_when(proc, lambda: _steps(run), "the SLURM job's first steps")
    assert f"continue it with: gpujob resume {run}" in stderr
    assert stdout.strip().splitlines()[-1] == str(run)
    assert CheckpointStore(run).paths(), "the workers checkpointed before the job was cancelled"
    first_job = read_record(run).handles["slurm_job_id"]
    assert _job_state(first_job) in FINAL_STATES | {""}, "the job ended, nothing of it left running"

    kept = _steps(run)[-1]
    again = subprocess.Popen([sys.executable, "-m", "runner.cli", "resume", str(run)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = _interrupt_when(again, lambda: max(_steps(run), default=0) > kept, "the resumed SLURM job's steps")
    assert "submitted SLURM job" in stderr  # resumed on SLURM, not on this (login) node
    assert read_record(run).handles["slurm_job_id"] != first_job
    assert len(list((run / "job").glob("slurm-*.out"))) == 2

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as SLURM's tasks had: see `uninterrupted`
    here = cli("resume", run, "--here")
    assert here.exit_code == 0, here.stderr
    assert here.run_dir == run
    record = read_record(run)
    assert record.backend == "local" and "moved here from backend slurm" in [e["event"] for e in record.events]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 20
    _assert_trained_like(run, uninterrupted)


def test_a_requeued_job_resumes_from_its_checkpoint_into_the_same_folder(write_spec, tmp_path, slurm_cluster,
                                                                         uninterrupted):
    """What SLURM does to a preempted job: stop it (SIGTERM), put it back in the queue, start it
    again. gpujob follows it throughout, and the run ends as if it had never stopped."""
    spec = write_spec(name="requeue-test", **PREEMPTIBLE)
    runs = tmp_path / "runs"
    proc = _submit_in_background(spec, runs)
    run = _only_run(runs, proc)
    wait_for(lambda: any(m["kind"] == "epoch" for m in read_jsonl_if(run / "metrics.jsonl"))
             or proc.poll() is not None, "the SLURM job's first epoch")
    assert proc.poll() is None, proc.stderr.read()
    job_id = read_record(run).handles["slurm_job_id"]
    requeue_now(job_id, run)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(run)
    assert "checkpoint saved" in stdout + stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["epochs"] == 20
    _assert_trained_like(run, uninterrupted)


def test_a_requeued_job_whose_restart_fails_before_its_script_runs_is_not_reported_as_stopped(
        write_spec, tmp_path, slurm_cluster):
    """The first attempt was stopped by the requeue and wrote its exit code (143); the restart then
    fails before its batch script runs (its output file cannot be opened: JobLaunchFailure), so
    the exit code on disk is the first attempt's, not this one's."""
    spec = write_spec(name="requeue-fails", **PREEMPTIBLE)
    runs = tmp_path / "runs"
    proc = _submit_in_background(spec, runs)
    run = _only_run(runs, proc)
    wait_for(lambda: _steps(run) or proc.poll() is not None, "the SLURM job's first steps")
    assert proc.poll() is None, proc.stderr.read()
    job_id = read_record(run).handles["slurm_job_id"]
    requeue_now(job_id, run, before_restart=lambda: subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", f"StdOut={tmp_path}/no-such-folder/out"], check=True))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"gpujob: slurm: job {job_id} was requeued, and its restart (1) ended FAILED (JobLaunchFailure) before its "
        f"batch script ran; its last checkpoint is in {run}; continue it with: gpujob resume {run}")
    assert cli("status", run).stdout.startswith(f"{run.name}: failed"), "not stopped, not preempted"


def test_a_job_that_reaches_its_time_limit_is_a_timeout_not_a_preemption(write_spec, tmp_path, slurm_cluster):
    """SLURM's own warning before the time limit (--signal) stops the workers, which checkpoint:
    that is resources.timeout_minutes reached, exit 1, as on every backend, not a preemption to
    resume (143). --time is whole minutes: two, so that the warning comes after the workers' start-up
    even on a loaded machine (with one, it came 20 s in, and under the full suite's load it ended the
    workers while they still imported torch: "Alarm clock", no checkpoint)."""
    spec = write_spec(name="time-limit", model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                      resources={"processes": 2, "timeout_minutes": 2},
                      # stop_grace_s 40: the warning comes 40 s before the limit, before SLURM's 30-second checks
                      train={"epochs": 1000, "log_every_steps": 10, "checkpoint_every_minutes": 60,
                             "stop_grace_s": 40})
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    run = result.run_dir
    assert result.exit_code == 1, result.stderr
    stopped = re.search(r"ran past resources.timeout_minutes \(2 min\) and was stopped at step (\d+), checkpoint "
                        "saved", result.stdout)
    assert stopped, result.stdout[-2000:]
    kept = f"step-{int(stopped[1]):08d}.pt"
    assert CheckpointStore(run).paths()[0].name == kept
    assert result.stderr.strip().splitlines()[-1] == (
        f"gpujob: slurm: job {read_record(run).handles['slurm_job_id']} ran past resources.timeout_minutes (2 min) "
        f"and was stopped; last checkpoint {kept}; continue it with: gpujob resume {run}")
    assert cli("status", run).stdout.startswith(f"{run.name}: failed")


def _kill_wait_s() -> int:
    """How long SLURM waits between SIGTERM and SIGKILL when it stops a job step (KillWait)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^KillWait\s*=\s*(\d+)", config, re.M)[1])


def test_a_stop_keeps_the_checkpoint_rank_0_is_still_writing(write_spec, tmp_path, slurm_cluster):
    """On a stop, rank 1 has nothing to save; had it exited at once, srun --kill-on-bad-exit would
    have killed rank 0 KillWait seconds later, mid-write. Here rank 0's write takes longer than
    that (a large model), and the stop's checkpoint is still the newest, whole."""
    slow_from = tmp_path / "slow-from-now"
    save_s = _kill_wait_s() + 10
    spec = write_spec(name="slow-save",
                      model={"name": "tests.slurm_plugins:slow_to_save",
                             "args": {"slow_from": str(slow_from), "save_s": save_s}},
                      data={"dataset": "digits", "batch_size": 32}, resources={"processes": 2},
                      train={"epochs": 1000, "log_every_steps": 10, "checkpoint_every_minutes": 60,
                             "stop_grace_s": save_s + 30, "collective_timeout_s": save_s + 60})
    submitted = cli("submit", spec, "--backend", "slurm", "--detach", "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir.resolve()
    wait_for(lambda: _steps(run), "the SLURM job's first steps")
    slow_from.touch()
    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0, cancelled.stderr
    job_id = read_record(run).handles["slurm_job_id"]
    output = (run / "job" / f"slurm-{job_id}.out").read_text()
    stopped = re.search(r"^0: gpujob: stopped at step (\d+) by SIGTERM, checkpoint saved", output, re.M)
    assert stopped, output[-3000:]
    store = CheckpointStore(run)
    assert store.paths()[0].name == f"step-{int(stopped[1]):08d}.pt"
    assert store.load_latest()["loop"]["step"] == int(stopped[1]), "whole, and the stop's"
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")


def test_each_task_gets_the_cpus_it_asked_for(write_spec, tmp_path, slurm_cluster):
    """slurm.cpus_per_task: 2 on a cluster that binds tasks to cores (SLURM_CPU_BIND=cores, as a
    site's default may): the task runs on 2 CPUs with 2 threads. srun (SLURM 22.05 and later)
    does not take --cpus-per-task from sbatch: each task was bound to one CPU."""
    report = tmp_path / "cpus"
    spec = write_spec(model={"name": "tests.slurm_plugins:cpu_reporter", "args": {"report_to": str(report)}},
                      data={"dataset": "digits", "batch_size": 64}, train={"epochs": 1, "max_steps": 2},
                      slurm={"cpus_per_task": 2, "setup": ["export SLURM_CPU_BIND=cores"]})
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    seen = json.loads(Path(f"{report}-0.json").read_text())
    assert (len(seen["cpus"]), seen["threads"]) == (2, 2), seen


def test_a_runs_dir_with_a_space_a_hash_a_percent_and_non_ascii_runs_on_slurm(write_spec, tmp_path, slurm_cluster):
    runs = tmp_path / "my runs ü#1 100%"
    spec = write_spec(data={"dataset": "digits", "batch_size": 64}, resources={"processes": 2},
                      train={"epochs": 1, "max_steps": 4})
    dry = cli("submit", spec, "--backend", "slurm", "--dry-run", "--runs-dir", runs)
    assert dry.exit_code == 0, dry.stderr
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", runs)
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    assert run.parent == runs.resolve() and (run / "summary.json").is_file()
    job_id = read_record(run).handles["slurm_job_id"]
    assert (run / "job" / f"slurm-{job_id}.out").is_file()
    assert sorted(path.name for path in (run / "job").glob("rank-*.exit")) == ["rank-0.exit", "rank-1.exit"]


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
