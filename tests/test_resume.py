"""Preemption safety: killed, stopped or damaged runs resume to exactly the run that
never stopped."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from runner.training.checkpoint import CheckpointStore, read_checkpoint
from tests.conftest import REPO, cli, read_jsonl

TIMING_ONLY = {"samples_per_s", "wall_s"}


def _same_weights(a, b) -> bool:
    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _curve(run):
    """metrics.jsonl without the wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in m.items() if k not in TIMING_ONLY} for m in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture(autouse=True)
def the_same_threads_in_every_run(monkeypatch):
    """Each test holds an interrupted run against a separate one that never stopped, bit for bit.
    gpujob picks a fresh run's intra-op threads by the machine's load (a resume keeps its run's),
    and another count sums a step in another order, so the two runs get one thread each."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def digits_cnn(write_spec):
    def make(**train):
        return write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                          optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
                          train={"epochs": 2, "log_every_steps": 5, "checkpoint_every_minutes": 0, **train})
    return make


def test_kill_9_at_random_moments_then_resume_is_bit_identical(digits_cnn, tmp_path):
    tries, mid_write = 16, 4
    out = subprocess.run([sys.executable, "-m", "tests.kill_resume_driver", str(digits_cnn()), str(tmp_path),
                          str(tries), "1234", str(mid_write)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    reference = tmp_path / "reference"
    assert len(report["tries"]) == tries + mid_write
    for attempt in report["tries"]:
        run = tmp_path / attempt["dir"]
        assert attempt["resume_exit"] == 0, attempt
        assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir()), attempt
        assert _same_weights(reference, run), attempt
        assert _curve(run) == _curve(reference), attempt  # no duplicated or missing steps
        summary, ref = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
        assert (summary["train_loss"], summary["test_loss"]) == (ref["train_loss"], ref["test_loss"])
    random_tries = [a for a in report["tries"] if not a["targeted"]]
    assert sum(a["killed"] for a in random_tries) >= tries - 2, report  # the kills land while it trains
    targeted = [a for a in report["tries"] if a["targeted"]]
    assert all(a["killed"] and a["mid_write"] for a in targeted), targeted  # and some mid-checkpoint-write
    resumed = [json.loads((tmp_path / a["dir"] / "summary.json").read_text())["resumed"] for a in report["tries"]
               if a["killed"]]
    assert sum(resumed) >= len(resumed) // 2


def test_a_kill_after_the_last_step_but_before_the_epoch_closed_resumes_to_the_same_end(digits_cnn, tmp_path,
                                                                                         monkeypatch):
    """The window the random kills found once: the last step's checkpoint is on disk, the epoch's
    record is written, and the process dies before the next checkpoint lands."""
    from runner.spec.load import load_spec
    from runner.launching.worker import run_worker

    spec = load_spec(digits_cnn())
    reference = run_worker(spec, run_dir=tmp_path / "reference", quiet=True)

    class Killed(BaseException):
        pass

    real_save = CheckpointStore.save

    def save_or_die(self, state, step):
        if state["loop"]["epoch"] > spec.train.epochs:  # the last epoch is closed: die before this one lands
            raise Killed
        return real_save(self, state, step)

    monkeypatch.setattr(CheckpointStore, "save", save_or_die)
    with pytest.raises(Killed):
        run_worker(spec, run_dir=tmp_path / "run", quiet=True)
    monkeypatch.undo()
    run = run_worker(spec, run_dir=tmp_path / "run", quiet=True, resume=True)
    assert _same_weights(reference, run)
    assert _curve(run) == _curve(reference)


@pytest.mark.parametrize("killed_in", ["spec.yaml", "env.json"])
def test_a_kill_while_the_run_folder_is_being_started_resumes_to_a_whole_folder(digits_cnn, tmp_path,
                                                                               monkeypatch, killed_in):
    """The windows the random kills found next: dead with spec.yaml still a temp file, or with
    spec.yaml written and env.json not. Resuming must finish the run with every file in place."""
    from runner.runs import files as run_folder
    from runner.spec.load import load_spec
    from runner.launching.worker import run_worker

    spec = load_spec(digits_cnn(epochs=1, max_steps=6))
    reference = run_worker(spec, run_dir=tmp_path / "reference", quiet=True)

    class Killed(BaseException):
        pass

    real_write = run_folder.atomic_write_chunks

    def write_or_die(path, chunks):
        if path.name == killed_in:  # die after the temp file is made, before it is renamed
            real_write(path.with_name(f".{path.name}.cut_0001.tmp"), chunks)  # mkstemp's shape
            raise Killed
        return real_write(path, chunks)

    monkeypatch.setattr(run_folder, "atomic_write_chunks", write_or_die)
    with pytest.raises(Killed):
        run_worker(spec, run_dir=tmp_path / "run", quiet=True)
    monkeypatch.undo()
    run = run_worker(spec, run_dir=tmp_path / "run", quiet=True, resume=True)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert json.loads((run / "env.json").read_text())["python"]
    assert _same_weights(reference, run) and _curve(run) == _curve(reference)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(digits_cnn, tmp_path):
    spec = digits_cnn(epochs=1, max_steps=20)
    reference = cli("run", spec, "--run-dir", tmp_path / "reference").run_dir
    run = tmp_path / "damaged"
    assert cli("run", spec, "--run-dir", run).exit_code == 0
    # pretend the run died just before its end: drop the summary, damage the newest checkpoint
    (run / "summary.json").unlink()
    newest, previous = CheckpointStore(run).paths()
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])  # truncated
    result = cli("run", spec, "--run-dir", run, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "damaged" in result.stderr and newest.name in result.stderr and "falling back" in result.stderr
    assert _same_weights(reference, run)
    assert _curve(run) == _curve(reference)

    (run / "summary.json").unlink()
    for path in CheckpointStore(run).paths():
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF  # one flipped bit-pattern: the digest catches what a loader might not
        path.write_bytes(bytes(data))
    result = cli("run", spec, "--run-dir", run, "--resume")
    assert result.exit_code == 1 and "every checkpoint" in result.stderr and "damaged" in result.stderr


@pytest.mark.parametrize("count", ["abc", "0"])
def test_resume_refuses_a_bad_worker_count_and_leaves_the_run_as_it_was(digits_cnn, tmp_path, count):
    spec = digits_cnn(epochs=1, max_steps=6)
    run = tmp_path / "run"
    assert cli("run", spec, "--run-dir", run).exit_code == 0
    (run / "summary.json").unlink()  # as if it died just before its end
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = cli("resume", run, "--nproc-per-node", count)
    assert result.exit_code == 2 and "--nproc-per-node" in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert cli("resume", run).exit_code == 0 and (run / "summary.json").exists()


def _start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_steps(run_dir, count, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never got going")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_and_says_how_to_resume(fashion_spec, tmp_path, signum, code):
    spec = fashion_spec(train={"epochs": 40, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    reference = cli("run", spec, "--run-dir", tmp_path / "reference").run_dir
    run = tmp_path / "stopped"
    proc = _start(["run", spec, "--run-dir", run])
    _wait_for_steps(run, 3, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"gpujob resume {run}" in stderr and "Traceback" not in stderr
    assert len(CheckpointStore(run).paths()) == 1  # written on the signal, long before the 10-minute mark
    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert _same_weights(reference, run)
    assert _curve(run) == _curve(reference)
    summary = json.loads((run / "summary.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    assert summary["resumed"] == 1 and len(timing["interruptions"]) == 1
    again = cli("resume", run)
    assert again.exit_code == 0 and "already finished" in again.stderr


def test_sigterm_stops_every_ddp_worker_and_resume_continues(fashion_spec, tmp_path):
    spec = fashion_spec(resources={"processes": 2},
                        train={"epochs": 15, "log_every_steps": 5, "checkpoint_every_minutes": 10})
    reference = cli("submit", spec, "--runs-dir", tmp_path / "reference").run_dir
    proc = _start(["submit", spec, "--runs-dir", tmp_path / "runs"])
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob("*/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (run,) = (tmp_path / "runs").iterdir()
    _wait_for_steps(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 143, stderr
    assert f"gpujob resume {run}" in stderr
    assert CheckpointStore(run).paths()
    out = subprocess.run(["pgrep", "-f", f"runner.cli run .*{run}.* --worker"], capture_output=True, text=True)
    assert out.stdout.strip() == ""  # this run's workers only: other tests may be training beside it
    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    ours, ref = _curve(run), _curve(reference)
    assert [m["step"] for m in ours] == [m["step"] for m in ref]
    for a, b in zip(ours, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert json.loads((run / "summary.json").read_text())["resumed"] == 1


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                      optimizer={"name": "sgd", "lr": 1e12},
                      train={"epochs": 3, "log_every_steps": 1, "checkpoint_every_minutes": 0})
    result = cli("run", spec, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1
    assert "stop_on_nan" in result.stderr and "nan" in result.stderr.lower()
    kept = CheckpointStore(tmp_path / "run").paths()
    assert kept, "the last good checkpoint is kept"
    for path in kept:
        weights = read_checkpoint(path)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values())
