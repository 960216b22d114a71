"""One job lifecycle: where a job goes, the record every run gets, and list/status/logs/cancel/
resume on local runs for real; the rules every backend keeps (a folder is a run only through
gpujob, a live run is never started twice, two resumes never both run)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from runner.backends.auto import choose_backend
from runner.runs import lock as run_lock
from runner.runs import record as run_record
from runner.spec.load import load_spec
from tests.conftest import REPO, cli, cli_subprocess, read_jsonl, read_jsonl_if, wait_for


@pytest.fixture
def long_digits(write_spec):
    """A digits CNN long enough to be caught running: 400 epochs of 23 steps."""
    def make(**train):
        return write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                          optimizer={"name": "sgd", "lr": 0.05},
                          train={"epochs": 400, "log_every_steps": 5, "checkpoint_every_minutes": 10, **train})
    return make


def _steps(run):
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]


# ---- where a job goes --------------------------------------------------------------------


def test_auto_trains_here_without_a_gpu_request_or_with_the_gpus_here(write_spec):
    assert choose_backend(load_spec(write_spec()), gpus_here=[])[0] == "local"
    a10g = load_spec(write_spec(resources={"gpu": "A10G:2"}))
    here, why = choose_backend(a10g, gpus_here=[("NVIDIA A10G", 24.0), ("NVIDIA A10G", 24.0)])
    assert here == "local" and "this machine has A10G:2" in why
    a100 = load_spec(write_spec(resources={"gpu": "A100-80GB:1"}))
    assert choose_backend(a100, gpus_here=[("NVIDIA A100-SXM4-80GB", 85.0)])[0] == "local"
    assert choose_backend(a100, gpus_here=[("NVIDIA A100-PCIE-40GB", 42.5)])[0] == "modal"  # the 40 GB card


def test_auto_rents_a_gpu_this_machine_lacks_and_explicit_choices_win(write_spec):
    spec = load_spec(write_spec(resources={"gpu": "A10G:2"}))
    name, why = choose_backend(spec, gpus_here=[("NVIDIA A10G", 24.0)])  # one, not two
    assert name == "modal" and "asks for A10G:2 and this machine has 1 A10G" in why
    assert choose_backend(spec, gpus_here=[])[1].endswith("this machine has no CUDA GPU: renting it on Modal")
    assert choose_backend(load_spec(write_spec(resources={"gpu": "A10G:2"}, backend="local")), [])[0] == "local"
    rtx = write_spec(resources={"gpu": "RTX4090:1"}, vast={"image": "docker.io/me/gpujob:1"})
    assert choose_backend(load_spec(rtx), gpus_here=[])[0] == "vast"  # Modal has no RTX4090


def test_the_design_cards_command_goes_to_modal_and_asks_for_a_token(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env = {**clean, "HOME": str(home)}
    dry = subprocess.run([sys.executable, "-m", "runner.cli", "submit", "jobs/resnet18.yaml", "--gpu", "A10G:2",
                          "--dry-run", "--set", "data.batch_size=16", "--runs-dir", str(tmp_path / "runs")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in dry.stdout.splitlines()
                if re.search(r"\S\s{2,}\S", line))
    assert rows["backend"] == "modal"
    assert "asks for A10G:2 and this machine has no CUDA GPU" in dry.stdout
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", "jobs/resnet18.yaml", "--gpu", "A10G:2",
                          "--runs-dir", str(tmp_path / "runs")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 3 and "modal token new" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_version_and_short_help():
    out = cli_subprocess("--version")
    assert out.returncode == 0 and out.stdout.startswith("gpujob 0.")
    short = cli_subprocess("-h")
    assert short.returncode == 0 and "submit" in short.stdout and "cancel" in short.stdout


# ---- the record and the lock --------------------------------------------------------------


def test_every_run_gets_its_record_first_and_never_a_credential(write_spec, tmp_path):
    result = cli_subprocess("submit", write_spec(train={"epochs": 1, "max_steps": 3}), "--runs-dir", tmp_path / "runs",
                            env={"MODAL_TOKEN_SECRET": "as-secret-never-kept", "VAST_API_KEY": "vast-key-never-kept"})
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / result.stdout.strip().splitlines()[-1].split("/")[-1]
    record = json.loads((run / "submission.json").read_text())
    assert record["backend"] == "local" and record["handles"]["pid"] > 0 and record["submitted_from"]["cwd"]
    assert record["asks"] == {"gpu": None, "world_size": 1, "epochs": 1, "max_steps": 3, "name": "test-job"}
    written = "".join(p.read_text(errors="replace") for p in run.rglob("*") if p.is_file() and p.suffix != ".pt")
    assert "never-kept" not in written


def test_resume_refuses_a_folder_gpujob_did_not_make_and_changes_nothing(tmp_path, write_spec):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "spec.yaml").write_text(write_spec().read_text())
    (mine / "model.pt").write_bytes(b"the user's own weights")
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    for command in (["resume", mine], ["cancel", mine], ["status", mine], ["logs", mine], ["fetch", mine]):
        out = cli_subprocess(*command)
        assert out.returncode == 2 and "not a gpujob run" in out.stderr and out.stderr.count("\n") == 1, command
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before


def test_a_damaged_record_is_one_line_and_nothing_changes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "submission.json").write_text("{not json")
    out = cli_subprocess("resume", run)
    assert out.returncode == 2 and "damaged submission record" in out.stderr and out.stderr.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == ["submission.json"]


# ---- the local lifecycle, for real -----------------------------------------------------------


def test_detach_status_logs_cancel_resume_and_runs(long_digits, tmp_path):
    runs = tmp_path / "runs"
    submitted = cli("submit", long_digits(max_steps=400), "--detach", "--runs-dir", runs)
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    assert f"gpujob logs {run} --follow" in submitted.stdout and f"gpujob cancel {run}" in submitted.stdout
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 4, "the detached job's steps")

    status = cli("status", run.name, "--runs-dir", runs)
    assert status.stdout.startswith(f"{run.name}: running: process ") and status.exit_code == 0
    assert "step 5/400" in cli("logs", run).stdout  # its output, from job/output.log
    listed = cli("runs", "--runs-dir", runs).stdout.splitlines()
    assert listed[0].split() == ["run", "backend", "state", "gpu", "epoch", "test_acc", "wall", "cost"]
    assert listed[1].split()[:3] == [run.name, "local", "running"]

    twice = cli("resume", run)
    assert twice.exit_code == 2 and "is still running" in twice.stderr and "gpujob cancel" in twice.stderr
    again = cli_subprocess("run", run / "spec.yaml", "--run-dir", run, "--resume")
    assert again.returncode == 2 and "is live" in again.stderr

    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout and "step-" in cancelled.stdout
    status = cli("status", run).stdout
    assert status.startswith(f"{run.name}: cancelled") and f"gpujob resume {run}" in status
    assert cli("cancel", run).stdout.startswith(f"{run.name} is not running")  # safe to repeat
    kept = _steps(run)

    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.run_dir == run and (run / "summary.json").exists()
    assert _steps(run) == sorted(set(_steps(run))) and _steps(run)[: len(kept)] == kept  # each step once
    assert json.loads((run / "summary.json").read_text())["resumed"] == 1
    listed = json.loads(cli("runs", "--runs-dir", runs, "--json").stdout)
    epochs = json.loads((run / "summary.json").read_text())["epochs"]
    assert [(r["run"], r["state"], r["epoch"], r["epochs"]) for r in listed] == [(run.name, "finished", epochs, 400)]
    events = [e["event"] for e in json.loads((run / "submission.json").read_text())["events"]]
    assert events == ["submitted", "cancel asked", "resumed"]


def test_logs_follow_reattaches_to_a_detached_run_until_it_ends(long_digits, tmp_path):
    run = cli("submit", long_digits(max_steps=60), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    followed = cli_subprocess("logs", run, "--follow", timeout=300)
    assert followed.returncode == 0 and "step 60/60" in followed.stdout and "done: test_accuracy" in followed.stdout
    assert cli("status", run).stdout.startswith(f"{run.name}: finished")


def test_logs_follow_waits_for_the_last_lines_printed_after_the_job_lets_go_of_its_folder(long_digits, tmp_path):
    """The detached `gpujob run` releases the run's lock when training ends, then prints its
    result ("done: ...") and only then does the wrapper write job/exit-code. A follower that
    read the lock alone stopped in that window without the result (seen in CI). Here the
    window is held open: the finished run's last lines and exit code come back 2 s later."""
    run = cli("submit", long_digits(max_steps=10), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    wait_for(lambda: (run / "job" / "exit-code").exists(), "the detached run to end", 300)
    output, exit_file = run / "job" / "output.log", run / "job" / "exit-code"
    whole, code = output.read_text(), exit_file.read_text()
    assert "done: test_accuracy" in whole
    cut = whole.index("done: test_accuracy")
    output.write_text(whole[:cut])
    exit_file.unlink()  # as just after the lock's release: the run's process is still printing
    printing = subprocess.Popen(["sleep", "60"])  # the detached command's wrapper, not yet ended
    run_record.update(run, handles=run_lock.identity(printing.pid))

    follower = subprocess.Popen([sys.executable, "-m", "runner.cli", "logs", str(run), "--follow"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(2)
    with output.open("a") as handle:
        handle.write(whole[cut:])
    exit_file.write_text(code)
    printing.kill()
    printed, _ = follower.communicate(timeout=120)
    assert follower.returncode == 0 and "done: test_accuracy" in printed, printed


def test_two_resumes_at_once_never_both_run(long_digits, tmp_path):
    spec = long_digits(max_steps=200)
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--run-dir", str(run)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2, "the first run's steps")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    resumes = [subprocess.Popen([sys.executable, "-m", "runner.cli", "resume", str(run)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in resumes)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "not resuming it twice" in outcomes[1][1] or "is still running" in outcomes[1][1] or "is live" in outcomes[1][1]
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 200  # one resume ran, nothing interleaved


def test_a_killed_run_is_free_to_resume_once_its_process_is_gone(long_digits, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(long_digits(max_steps=100)),
                             "--run-dir", str(run)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 2, "the run's steps")
    assert cli("status", run).stdout.startswith(f"{run.name}: running")
    proc.kill()
    proc.wait()
    wait_for(lambda: cli("status", run).stdout.startswith(f"{run.name}: preempted"), "the lock to die with it", 30)
    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert _steps(run)[-1] == 100


def test_an_attached_local_run_is_cancelled_from_another_terminal(long_digits, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "submit", str(long_digits()), "--runs-dir", str(runs)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: runs.exists() and any(len(read_jsonl_if(p / "metrics.jsonl")) >= 2 for p in runs.iterdir()),
             "the attached run's steps")
    (run,) = runs.iterdir()
    time.sleep(0.2)
    assert cli("cancel", run).exit_code == 0
    assert proc.wait(timeout=120) == 143 and "checkpoint saved" in proc.stderr.read()
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")


# ---- what every backend shares (issue 24: chores once, names once) ----------------------------


def test_a_detached_local_run_keeps_what_it_sent_in_job_request_json(long_digits, tmp_path):
    """The base's submit, as every backend's: job/spec.yaml and job/request.json, exactly what
    was sent (here: the `gpujob run` the detached process runs)."""
    submitted = cli("submit", long_digits(max_steps=3), "--detach", "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    sent = json.loads((run / "job" / "request.json").read_text())
    assert sent == {"spec_file": str(run / "job" / "spec.yaml"), "run_dir": str(run), "world_size": 1,
                    "resume": False}
    assert load_spec(run / "job" / "spec.yaml").name == "test-job"
    wait_for(lambda: cli("status", run).stdout.startswith(f"{run.name}: finished"), "the detached job's end")


def _stopping_backend(ends_after: int | None):
    """A backend whose job ends `ends_after` polls after it is asked to stop (None: never)."""
    from runner.backends.base import Backend
    from runner.runs.state import RUNNING, RunState

    class Stopping(Backend):
        name = "stopping"
        stop_slack_s = 0.3

        def __init__(self):
            self.calls, self.polls = [], 0

        def status(self, run):
            return RunState(RUNNING, "")

        def ask_to_stop(self, run, state, grace_s):
            self.calls.append(("ask", grace_s))

        def still_running(self, run):
            self.polls += 1
            return ends_after is None or self.polls <= ends_after

        def end_now(self, run, state, waited_s):
            self.calls.append(("end now", waited_s))
            return "ended it"

    return Stopping()


def test_the_bases_stop_asks_waits_out_the_grace_and_ends_only_a_job_that_stays(tmp_path, write_spec):
    from runner.runs.paths import RunPaths
    from runner.runs.state import RUNNING, Run, RunState

    run = Run(tmp_path / "run", None)
    RunPaths(run.folder).job.mkdir(parents=True)
    RunPaths(run.folder).job_spec.write_text(write_spec(train={"stop_grace_s": 1}).read_text())
    polite = _stopping_backend(ends_after=2)
    assert polite.stop(run, RunState(RUNNING, "")) is None and polite.calls == [("ask", 1)]
    stubborn = _stopping_backend(ends_after=None)
    started = time.monotonic()
    assert stubborn.stop(run, RunState(RUNNING, "")) == "ended it"
    (asked, (ended, waited_s)) = stubborn.calls
    assert asked == ("ask", 1) and ended == "end now" and 1.3 < waited_s <= time.monotonic() - started < 10


def _constants(where) -> dict[str, set[str]]:
    """File (relative to the repository) -> the string constants its code holds."""
    import ast

    found = {}
    for path in sorted(where):
        found[str(path.relative_to(REPO))] = {node.value for node in ast.walk(ast.parse(path.read_text()))
                                              if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return found


# Moved onto the shared names by other hands (issue 24): modal and vast.ai, the training loop, the launcher.
ELSEWHERE = ("runner/backends/modal/", "runner/backends/vast/", "runner/training/loop.py", "runner/launching/launcher.py",
             "runner/launching/worker.py")


def test_the_worker_command_is_built_in_one_place():
    """`gpujob run SPEC --run-dir DIR ...` that every backend's job runs: one function builds it
    (the CLI declares the option, the launcher starts its ranks its own way)."""
    runner = REPO / "runner"
    building = [name for name, constants in _constants(runner.rglob("*.py")).items()
                if "--run-dir" in constants and not name.startswith(("runner/cli/", "runner/launching/launcher.py"))]
    assert building == ["runner/launching/command.py"]


def test_a_run_folders_file_names_are_spelled_only_in_runs_paths():
    """spec.yaml, the checkpoints folder and a checkpoint's name: RunPaths names them, once."""
    runner = REPO / "runner"
    spelled = {name: constants & {"spec.yaml", "checkpoints", "docker-run.json", "job.sbatch", "request.json"}
               for name, constants in _constants(runner.rglob("*.py")).items()
               if not name.startswith(ELSEWHERE) and name != "runner/runs/paths.py"}
    assert {name: names for name, names in spelled.items() if names} == {
        "runner/backends/slurm/backend.py": {"job.sbatch"}}  # what sbatch reads, beside request.json
