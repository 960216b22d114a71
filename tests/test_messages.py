"""What gpujob says when something is wrong: one line naming the cause, the right exit code, never
a traceback, whatever the run folder holds and whenever Ctrl-C comes (issues 22 and 23)."""

from __future__ import annotations

import json
import re
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

    from runner.training.setup import autocast_for

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


# ---- a run folder whose files are damaged --------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real finished run (digits, one epoch), copied by `a_run` for each case to damage."""
    import yaml

    root = tmp_path_factory.mktemp("finished")
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "model": {"name": "mlp"},
                                    "data": {"dataset": "digits", "batch_size": 64},
                                    "train": {"epochs": 1, "log_every_steps": 5}}))
    out = cli_subprocess("submit", spec, "--runs-dir", root / "runs")
    assert out.returncode == 0, out.stderr
    return root / "runs" / out.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]


@pytest.fixture
def a_run(finished_run, tmp_path):
    def copy(name: str):
        folder = tmp_path / "runs" / name
        shutil.copytree(finished_run, folder)
        return folder

    return copy


def _damage(folder, how: str) -> str:
    """Damage the run's summary.json as `how` says; returns what gpujob should say it is."""
    summary = folder / "summary.json"
    whole = summary.read_text()
    if how == "truncated":
        summary.write_text(whole[:40])
        return "damaged (not JSON, cut short?"
    if how == "folder":
        summary.unlink()
        summary.mkdir()
        return "damaged (a folder, not a file)"
    if how == "a list":
        summary.write_text("[1, 2]\n")
        return "damaged (a JSON list, not an object)"
    summary.write_text("{}\n")
    return "damaged (no epochs, train_loss, test_loss, wall_s)"


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


DAMAGES = ["truncated", "folder", "a list", "empty object"]


@pytest.mark.parametrize("how", DAMAGES)
def test_show_and_compare_say_a_damaged_summary_is_damaged_not_missing(a_run, finished_run, tmp_path, how):
    run = a_run("damaged")
    said = _damage(run, how)
    for result in (cli("show", run), cli("compare", finished_run, run, "--out", tmp_path / "cmp")):
        assert result.exit_code == 2, result.stdout
        line = _one_line(result.stderr)
        assert line.startswith(f"gpujob: {run / 'summary.json'}: {said}") and "no summary.json" not in line
    assert not (tmp_path / "cmp").exists()


def test_show_still_tells_a_missing_summary_from_a_damaged_one(a_run):
    run = a_run("unfinished")
    (run / "summary.json").unlink()
    result = cli("show", run)
    assert result.exit_code == 2 and "the run has not finished (no summary.json)" in _one_line(result.stderr)


def test_show_names_a_damaged_timing_json_and_shows_the_rest(a_run):
    run = a_run("timing")
    (run / "timing.json").write_text('{"epochs": [')
    result = cli("show", run)
    assert result.exit_code == 0, result.stderr
    assert re.search(rf"^damaged +{re.escape(str(run / 'timing.json'))}: damaged \(not JSON", result.stdout, re.M)
    assert re.search(r"^result +test_accuracy", result.stdout, re.M)


@pytest.mark.parametrize("line", ["null", "[1]", '"text"', '{"kind": "epoch", "epoch": "two", "test_accuracy": "x"}'])
def test_one_bad_run_never_breaks_the_listing_of_the_others(a_run, tmp_path, line):
    """Issue 23: a line `null` in an unfinished run's metrics.jsonl broke `gpujob runs` for all."""
    good = a_run("good")
    stopped = a_run("stopped")
    (stopped / "summary.json").unlink()
    with (stopped / "metrics.jsonl").open("a") as metrics:
        metrics.write(line + "\n")
    damaged = a_run("damaged")
    _damage(damaged, "truncated")
    listed = cli("runs", "--runs-dir", tmp_path / "runs")
    assert listed.exit_code == 0, listed.stderr
    rows = {row.split()[0]: row for row in listed.stdout.splitlines()[1:]}
    assert set(rows) == {"good", "stopped", "damaged"}
    assert "finished" in rows["good"] and "summary.json damaged" in rows["damaged"]
    as_json = cli("runs", "--runs-dir", tmp_path / "runs", "--json")
    assert as_json.exit_code == 0 and len(json.loads(as_json.stdout)) == 3
    assert good.is_dir()


@pytest.mark.parametrize("how", DAMAGES)
def test_fetch_of_a_run_with_a_damaged_summary_says_so_in_one_line(a_run, how):
    run = a_run("damaged")
    said = _damage(run, how)
    result = cli_subprocess("fetch", run)
    assert result.returncode == 2, result.stderr
    assert f"{run / 'summary.json'}: {said}" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run)  # the run folder, last, as always


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_of_a_run_with_a_damaged_summary_writes_it_again_or_says_why_not(a_run, how):
    """The final checkpoint holds everything a summary says: resume writes it again, unless a
    folder stands where it goes (then one line naming it)."""
    run = a_run("damaged")
    _damage(run, how)
    result = cli_subprocess("resume", run)
    assert "Traceback" not in result.stderr, result.stderr
    if how == "folder":
        assert result.returncode == 2 and f"{run / 'summary.json'}: a folder is where" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def test_logs_of_a_run_with_a_null_metrics_line(a_run):
    run = a_run("nullline")
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write("null\n")
    result = cli_subprocess("logs", run)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "epoch 1  train_loss" in result.stdout


def test_done_lines_read_the_summary_through_the_one_reader(a_run):
    """The end of an attached submit, resume or fetch (runner/cli.py _finish can print these)."""
    from runner.runs.reading import DamagedFile
    from runner.reports.show import done_lines

    run = a_run("done")
    lines = done_lines(run)
    assert lines[0].startswith("done: test_accuracy ") and " s on cpu x1" in lines[0]
    (run / "summary.json").write_text("{}")
    with pytest.raises(DamagedFile) as err:
        done_lines(run)
    assert err.value.exit_code == 2 and err.value.message == f"{run / 'summary.json'}: damaged (no epochs, " \
                                                               "train_loss, test_loss, wall_s)"
    (run / "summary.json").unlink()
    assert done_lines(run) == []


# ---- the error a failed run is remembered by -------------------------------------------------

TORCH_CALLBACK_TRACEBACK = """Traceback (most recent call last):
  File "/work/runner/train.py", line 301, in step
    self.scaler.scale(loss).backward()
RuntimeError: Got the following error when running the callback: RuntimeError: [../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:7365

At:
  /work/runner/distributed.py(157): done
""".splitlines()


def test_last_error_line_is_a_tracebacks_error_not_its_last_frame():
    assert last_error_line(TORCH_CALLBACK_TRACEBACK).startswith("RuntimeError: Got the following error when running")
    chained = ["Traceback (most recent call last):", '  File "x.py", line 1, in f', "KeyError: 'a'", "",
               "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "x.py", line 3, in f',
               "torch.distributed.DistBackendError: NCCL error in: ../init.cpp:1", "  frame #0: c10::Error"]
    assert last_error_line(chained) == "torch.distributed.DistBackendError: NCCL error in: ../init.cpp:1"
    assert last_error_line(["gpujob-worker: joined", "gpujob: job failed: ValueError: x"]) == "job failed: ValueError: x"
    assert last_error_line(["some output", "the last line"]) == "the last line"  # no error line: as before
    assert last_error_line([]) == ""


@pytest.fixture(scope="module")
def a_failed_ddp_run(tmp_path_factory):
    """A real 2-worker run whose rank 1 raises at its third step (tests/plugins.py saboteur)."""
    import yaml

    root = tmp_path_factory.mktemp("ddp-failure")
    spec = root / "fails.yaml"
    spec.write_text(yaml.safe_dump({"name": "fails", "model": {"name": "tests.plugins:saboteur",
                                                               "args": {"rank": 1, "at_step": 3}},
                                    "data": {"dataset": "digits", "batch_size": 64},
                                    "train": {"epochs": 1, "log_every_steps": 5}, "resources": {"processes": 2}}))
    out = cli_subprocess("submit", spec, "--runs-dir", root / "runs")
    assert out.returncode == 1, out.stderr
    assert "rank 1 of 2 failed: job failed: ValueError: planted failure at step 3" in out.stderr
    run = root / "runs" / out.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    status = cli_subprocess("status", run)
    assert status.returncode == 0, status.stderr
    return run, status.stdout.strip()


def test_status_after_a_ddp_failure_names_an_error_not_a_stack_frame(a_failed_ddp_run):
    """Issue 23: it said "failed: .../runner/distributed.py(157): done"."""
    run, said = a_failed_ddp_run
    assert said.startswith(f"{run.name}: failed: ")
    assert re.search(r"failed: [\w.]*(Error|Exception)\b", said) and not re.search(r"\.py\(\d+\)", said), said


def test_status_after_a_ddp_failure_names_the_rank_that_failed_and_its_error(a_failed_ddp_run):
    _, said = a_failed_ddp_run
    assert "rank 1 of 2" in said and "ValueError: planted failure at step 3" in said


# ---- Ctrl-C ------------------------------------------------------------------------------------


def _entry_points():
    """The console script users run (`from runner.cli.main import main`), at every moment; and
    `python -m runner.cli`, as backends and workers start it, at two."""
    script = REPO / ".venv" / "bin" / "gpujob"
    module = [sys.executable, "-m", "runner.cli"]
    return ([pytest.param([str(script)], (0.2, 0.5, 1, 2, 3), id="script")] if script.exists() else []) + \
        [pytest.param(module, (0.2, 2), id="module")]


@pytest.mark.parametrize("entry, moments", _entry_points())
def test_ctrl_c_at_any_moment_of_a_dry_run_is_one_line_and_exit_130(tmp_path, entry, moments):
    """Issue 23: SIGINT 2 s into `submit --dry-run` printed a 31-line traceback from typer; 0.7 s
    in (numpy half imported) a RecursionError. Each moment: one line, exit 130, or, where the
    dry run had already finished, its whole output."""
    import yaml

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "ctrl-c", "model": {"name": "cnn"}, "data": {"dataset": "digits"}}))
    seen = []
    for moment in moments:
        job = subprocess.Popen([*entry, "submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(moment)
        job.send_signal(signal.SIGINT)
        out, err = job.communicate(timeout=120)
        finished = job.returncode == 0 and out.endswith("dry run: nothing was submitted\n") and not err
        assert finished or (job.returncode, err) == (130, "gpujob: interrupted\n"), (moment, job.returncode, err)
        seen.append("finished" if finished else "interrupted")
        assert not (tmp_path / "runs").exists()
    assert seen[:2] == ["interrupted"] * 2  # the dry run takes longer than a second
