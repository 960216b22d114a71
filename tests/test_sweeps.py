"""`gpujob sweep` (issue 25): a grid or a search over a spec's fields, each trial an ordinary run
folder, the answer on local disk (a table, best.yaml, sweep.png), Optuna's pruning at epoch ends,
trials run in one process exactly as they would alone, and a killed sweep resumed without
repeating a trial that ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli, cli_subprocess, read_jsonl_if, wait_for

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same maths in the sweep's process and in a separate run's


def digits_spec(write_spec, epochs: int = 2, **sweep):
    sections = dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                    optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": epochs, "log_every_steps": 10})
    if sweep:
        sections["sweep"] = sweep
    return write_spec(**sections)


def sweep_folder(stdout: str) -> Path:
    return Path(stdout.strip().splitlines()[-1])


def record(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def test_a_grid_sweep_runs_every_combination_as_run_folders_and_names_the_best(write_spec, tmp_path):
    spec = digits_spec(write_spec)
    done = cli_subprocess("sweep", spec, "--grid", "optimizer.lr=0.1,0.01", "--grid", "data.batch_size=32,64",
                          "--runs-dir", tmp_path / "runs", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    folder = sweep_folder(done.stdout)
    sweep = record(folder)
    assert sweep["sampler"] == "grid" and sweep["planned"] == 4
    assert sorted((t["params"]["optimizer.lr"], t["params"]["data.batch_size"]) for t in sweep["trials"]) == [
        (0.01, 32), (0.01, 64), (0.1, 32), (0.1, 64)]
    assert all(t["state"] == "finished" and t["epochs"] == 2 and len(t["curve"]) == 2 for t in sweep["trials"])
    best = min(sweep["trials"], key=lambda t: t["value"])
    assert f"best: {best['folder']}" in done.stdout
    # the table is sorted by the metric
    rows = [line.split() for line in (folder / "table.txt").read_text().splitlines() if line.startswith(("1 ", "2 ",
                                                                                                         "3 ", "4 "))]
    values = [float(row[4]) for row in rows]
    assert values == sorted(values) and len(values) == 4
    # every trial is an ordinary run: status and show work on it
    for trial in sweep["trials"]:
        status = cli("status", folder / trial["folder"])
        assert status.exit_code == 0 and "finished" in status.stdout, status.stdout
    # best.yaml is the best trial's spec, ready to submit
    best_spec = yaml.safe_load((folder / "best.yaml").read_text())
    assert best_spec["optimizer"]["lr"] == best["params"]["optimizer.lr"]
    assert best_spec["data"]["batch_size"] == best["params"]["data.batch_size"]
    assert "sweep" not in best_spec
    assert cli("validate", folder / "best.yaml").exit_code == 0
    assert_an_image_of_the_sweep(folder / "sweep.png", panels=3)


def assert_an_image_of_the_sweep(path: Path, panels: int) -> None:
    """A PNG that decodes, sized for one panel per axis plus the curves, and not blank."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= panels * 300 and height >= 300
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # points, lines and text, not one flat colour


@pytest.mark.parametrize("grid, says", [
    ("optimizer.lrr=0.1,0.01", "optimizer.lrr"),
    ("optimizer.lr=0.1,-1", "optimizer.lr"),
    ("optimizer.lr=", "empty grid"),
    ("optimizer=0.1", "optimizer is a section"),
    ("data.batch_size=32,abc", "data.batch_size"),
    ("optimizer.lr=log(0,1)", "LOW > 0"),
])
def test_a_bad_axis_is_exit_2_naming_it_before_anything_runs(write_spec, tmp_path, grid, says):
    spec = digits_spec(write_spec)
    done = cli("sweep", spec, "--grid", grid, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 2, done.stdout
    assert says in done.stderr and f"--grid {grid}" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing made


def test_an_axis_written_in_the_spec_is_blamed_on_its_line(write_spec, tmp_path):
    spec = digits_spec(write_spec, axes={"optimizer.lr": [0.1, -1]})
    done = cli("sweep", spec, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 2
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "optimizer.lr:" in text and i > 10)
    assert f"{spec}:{line}: sweep.axes.optimizer.lr: optimizer.lr: Input should be greater than 0" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, says", [
    (["--set", "sweep.max_usd=0"], "sweep.max_usd: Input should be greater than 0"),
    (["--random", "0"], "--random 0"),
    (["--grid", "optimizer.lr=log(1e-4,1e-1)", "--set", "sweep.sampler=grid"], "a range is sampled, not a grid"),
    (["--grid", "optimizer.lr=log(1e-4,1e-1)"], "sweep.trials: how many trials to draw with sampler random"),
    (["--set", "sweep.metric=accuracy"], "sweep.metric: 'accuracy'"),
])
def test_a_budget_of_zero_and_other_bad_sweeps_are_exit_2(write_spec, tmp_path, args, says):
    spec = digits_spec(write_spec)
    done = cli("sweep", spec, "--grid", "data.batch_size=32,64", *args, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 2 and says in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()


def test_the_dry_run_prints_trials_by_time_by_dollars_and_refuses_a_sweep_over_its_budget(write_spec, tmp_path):
    spec = digits_spec(write_spec)
    rented = ["--set", "resources.gpu=A10G", "--grid", "optimizer.lr=0.1,0.01,0.001", "--runs-dir", tmp_path / "runs"]
    planned = cli("sweep", spec, *rented, "--set", "sweep.max_usd=100", "--dry-run")
    assert planned.exit_code == 0, planned.stderr
    total = planned.stdout.strip().splitlines()[-2]
    assert total.startswith("sweep: 3 trials (grid) x ") and "$" in total and "(budget $100.00)" in total, total
    assert "optimizer.lr=0.001: " in planned.stdout and " on modal, $" in planned.stdout
    refused = cli("sweep", spec, *rented, "--set", "sweep.max_usd=0.0001", "--dry-run")
    assert refused.exit_code == 2
    assert "sweep.max_usd: the sweep's estimate" in refused.stderr and "above its budget of $0.0001" in refused.stderr
    assert not (tmp_path / "runs").exists()


SIX_RATES = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]


def outcomes(folder: Path) -> list[tuple]:
    return [(t["number"], t["params"], t["state"], t["epochs"], t["value"], t["curve"]) for t in record(folder)["trials"]]


def test_a_six_trial_sweep_with_a_pruner_prunes_at_an_epoch_end_and_gives_the_same_result_twice(write_spec, tmp_path):
    spec = digits_spec(write_spec, epochs=3, axes={"optimizer.lr": SIX_RATES}, pruner="median", seed=7)
    folders = []
    for attempt in ("first", "second"):
        done = cli_subprocess("sweep", spec, "--runs-dir", tmp_path / attempt, env=ONE_THREAD)
        assert done.returncode == 0, done.stderr
        folders.append(sweep_folder(done.stdout))
    assert outcomes(folders[0]) == outcomes(folders[1])  # values, states and curves, bit for bit
    trials = record(folders[0])["trials"]
    assert len(trials) == 6 and all(t["state"] in ("finished", "pruned") for t in trials)
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "the median pruner stopped none of six learning rates from 0.3 to 0.001"
    for trial in pruned:
        run = folders[0] / trial["folder"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stopped_by"] == "pruned" and summary["epochs"] == trial["epochs"] < 3
        assert len(trial["curve"]) == trial["epochs"]
        checkpoints = sorted((run / "checkpoints").glob("step-*.pt"))
        assert checkpoints and int(checkpoints[-1].stem.split("-")[1]) == summary["steps"]  # at the epoch's end
    best = min((t for t in trials if t["state"] == "finished"), key=lambda t: t["value"])
    assert f"best: {best['folder']}" in done.stdout
    assert_an_image_of_the_sweep(folders[0] / "sweep.png", panels=2)


def test_each_trial_trains_exactly_as_a_separate_run_of_its_spec(write_spec, tmp_path):
    """Trials share one process (imports paid once), yet each builds its own data, model, optimizer
    and seed: the weights equal those of `gpujob run` on the trial's spec, in a process of its own."""
    import torch

    spec = digits_spec(write_spec, epochs=2)
    done = cli_subprocess("sweep", spec, "--grid", "optimizer.lr=0.1,0.02", "--runs-dir", tmp_path / "runs",
                          env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    folder = sweep_folder(done.stdout)
    for trial in record(folder)["trials"]:
        alone = tmp_path / f"alone-{trial['folder']}"
        ran = cli_subprocess("run", folder / trial["folder"] / "job" / "spec.yaml", "--run-dir", alone, env=ONE_THREAD)
        assert ran.returncode == 0, ran.stderr
        swept = torch.load(folder / trial["folder"] / "model.pt")
        separate = torch.load(alone / "model.pt")
        assert swept.keys() == separate.keys()
        assert all(torch.equal(swept[k], separate[k]) for k in swept), trial["folder"]
        assert json.loads((alone / "summary.json").read_text())["test_loss"] == trial["value"]


def start_sweep(spec: Path, runs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "sweep", str(spec), *args, "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **ONE_THREAD})


def the_sweep(runs: Path) -> Path | None:
    found = [p for p in runs.glob("*-sweep-*") if (p / "sweep.json").exists()] if runs.is_dir() else []
    return found[0] if found else None


def epochs_done(run: Path) -> int:
    return sum(r.get("kind") == "epoch" for r in read_jsonl_if(run / "metrics.jsonl"))


def test_a_sweep_killed_midway_resumes_without_repeating_a_finished_trial(write_spec, tmp_path):
    spec = digits_spec(write_spec, epochs=20)
    spec.write_text(spec.read_text().replace("log_every_steps: 10", "log_every_steps: 10\n  checkpoint_every_minutes: 0.005"))
    runs = tmp_path / "runs"
    driver = start_sweep(spec, runs, "--grid", "optimizer.lr=0.1,0.05,0.02")

    def second_trial_midway() -> bool:
        folder = the_sweep(runs)
        return folder is not None and epochs_done(folder / "trial-001") >= 2 and any(
            (folder / "trial-001" / "checkpoints").glob("step-*.pt"))

    wait_for(second_trial_midway, "the sweep's second trial two epochs in, with a checkpoint")
    driver.kill()  # kill -9: no handler runs, nothing is recorded by the driver itself
    driver.wait()
    folder = the_sweep(runs)
    assert folder is not None
    before = {t["folder"]: t for t in record(folder)["trials"]}
    assert before["trial-000"]["state"] == "finished" and before["trial-001"]["state"] == "running"
    first_summary = (folder / "trial-000" / "summary.json").stat().st_mtime_ns
    stopped = cli("sweep", "status", folder)
    assert "stopped" in stopped.stdout and f"gpujob sweep resume {folder}" in stopped.stdout, stopped.stdout

    resumed = cli_subprocess("sweep", "resume", folder, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    after = record(folder)
    assert after["state"] == "finished"
    assert [t["folder"] for t in after["trials"]] == ["trial-000", "trial-001", "trial-002"]
    assert all(t["state"] == "finished" and t["epochs"] == 20 for t in after["trials"])
    assert sorted(t["params"]["optimizer.lr"] for t in after["trials"]) == [0.02, 0.05, 0.1]  # none twice
    assert after["trials"][0]["value"] == before["trial-000"]["value"]
    assert (folder / "trial-000" / "summary.json").stat().st_mtime_ns == first_summary  # not run again
    assert "trial-000" not in resumed.stdout.split("sweep ")[0]  # no line for it: it did not run
    assert json.loads((folder / "trial-001" / "summary.json").read_text())["resumed"] >= 1  # from its checkpoint
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    import optuna

    study = optuna.load_study(study_name="sweep", storage=JournalStorage(JournalFileBackend(str(folder / "optuna.journal"))))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_a_detached_sweep_is_followed_cancelled_and_resumed_from_any_terminal(write_spec, tmp_path):
    spec = digits_spec(write_spec, epochs=100)  # long enough that the cancel lands in the first trial on an idle machine
    runs = tmp_path / "runs"
    started = cli_subprocess("sweep", spec, "--grid", "optimizer.lr=0.1,0.05", "--detach", "--runs-dir", runs,
                             env=ONE_THREAD)
    assert started.returncode == 0, started.stderr
    folder = sweep_folder(started.stdout)
    assert "runs without this terminal" in started.stdout
    wait_for(lambda: epochs_done(folder / "trial-000") >= 1, "the detached sweep's first epoch")
    running = cli("sweep", "status", folder)
    assert "running (process" in running.stdout and "trial-000 running since" in running.stdout, running.stdout
    cancelled = cli("sweep", "cancel", folder)
    assert cancelled.exit_code == 0 and f"cancelled {folder.name}" in cancelled.stdout, cancelled.stdout
    sweep = record(folder)
    assert [t["state"] for t in sweep["trials"]] == ["cancelled"]  # stopped with a checkpoint; no other started
    assert any((folder / "trial-000" / "checkpoints").glob("step-*.pt"))
    assert "cancelled" in cli("sweep", "status", folder).stdout
    assert "not running; nothing to cancel" in cli("sweep", "cancel", folder).stdout  # safe to repeat
    resumed = cli_subprocess("sweep", "resume", folder, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    assert [t["state"] for t in record(folder)["trials"]] == ["finished", "finished"]
    assert json.loads((folder / "trial-000" / "summary.json").read_text())["resumed"] >= 1


def test_parallel_workers_share_out_the_trials_and_runs_groups_them(write_spec, tmp_path):
    spec = digits_spec(write_spec)
    runs = tmp_path / "runs"
    done = cli_subprocess("sweep", spec, "--grid", "optimizer.lr=0.1,0.05,0.02,0.01", "--parallel", "2",
                          "--runs-dir", runs, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    folder = sweep_folder(done.stdout)
    trials = record(folder)["trials"]
    assert sorted(t["params"]["optimizer.lr"] for t in trials) == [0.01, 0.02, 0.05, 0.1]
    assert all(t["state"] == "finished" for t in trials)
    pids = {json.loads((folder / t["folder"] / "submission.json").read_text())["handles"]["pid"] for t in trials}
    assert len(pids) == 2  # two worker processes, each several trials in turn
    listed = cli("runs", "--runs-dir", runs)
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert names == [f"{folder.name}/trial-00{i}" for i in range(4)]
    too_many = cli("sweep", spec, "--grid", "optimizer.lr=0.1,0.05", "--parallel", "999", "--runs-dir", runs)
    assert too_many.exit_code == 2 and "--parallel 999" in too_many.stderr


# ---- SLURM: one job array on the real cluster ---------------------------------------------------

from tests.test_slurm import slurm_cluster  # noqa: E402,F401  (the fixture: the cluster up, or a skip)


def array_tasks(job_id: str) -> list[str]:
    shown = subprocess.run(["squeue", "--noheader", "--array", "--jobs", job_id, "--format=%T"],
                           capture_output=True, text=True)
    return shown.stdout.split() if shown.returncode == 0 else []


def test_a_slurm_sweep_is_one_job_array_followed_cancelled_and_resumed(slurm_cluster, write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": 100, "log_every_steps": 10},
                      backend="slurm", slurm={"partition": "debug"},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05, 0.02]}, "max_parallel": 2})
    runs = tmp_path / "runs"
    started = cli_subprocess("sweep", spec, "--detach", "--runs-dir", runs, env=ONE_THREAD)
    assert started.returncode == 0, started.stderr
    folder = sweep_folder(started.stdout)
    job_id = record(folder)["handles"]["slurm_job_id"]
    script = (folder / "job" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --partition=debug" in script
    assert f"sweep work {folder.resolve()}" in script
    wait_for(lambda: epochs_done(folder / "trial-000") >= 1, "the array's first trial one epoch in")
    status = cli("sweep", "status", folder)
    assert f"running (SLURM array {job_id}:" in status.stdout, status.stdout
    cancelled = cli("sweep", "cancel", folder)
    assert cancelled.exit_code == 0 and f"cancelled {folder.name}" in cancelled.stdout, cancelled.stdout
    assert array_tasks(job_id) == []  # nothing left running or waiting
    states = [t["state"] for t in record(folder)["trials"]]
    assert "cancelled" in states and "running" not in states, states
    resumed = cli_subprocess("sweep", "resume", folder, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    sweep = record(folder)
    assert sweep["state"] == "finished" and len(sweep["trials"]) == 3
    assert all(t["state"] == "finished" and t["epochs"] == 100 for t in sweep["trials"])
    assert sorted(t["params"]["optimizer.lr"] for t in sweep["trials"]) == [0.02, 0.05, 0.1]
    assert "best: trial-" in resumed.stdout


# ---- Modal through its stand-in: a call per trial, the budget, a whole-sweep cancel -------------

from tests.test_modal import container_modal, volume  # noqa: E402,F401  (Modal's servers stood in for here)


def modal_sweep_spec(write_spec, epochs: int, max_usd=None, rates=(0.1, 0.05, 0.02), model="mlp"):
    sweep = {"axes": {"optimizer.lr": list(rates)}, "max_parallel": 2, **({"max_usd": max_usd} if max_usd else {})}
    return write_spec(model={"name": model}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": epochs, "log_every_steps": 10},
                      resources={"gpu": "A10G:1", "timeout_minutes": 20}, backend="modal", sweep=sweep)


def live_calls(service) -> int:
    return sum(1 for call in service.calls.values() if not call.ended.is_set())


def test_a_modal_sweep_spawns_one_call_per_trial_at_most_max_parallel_at_once(write_spec, container_modal, tmp_path):
    import threading

    service = container_modal()
    most = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most.append(live_calls(service))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    done = cli("sweep", modal_sweep_spec(write_spec, epochs=2), "--runs-dir", tmp_path / "runs")
    stop.set()
    watcher.join()
    assert done.exit_code == 0, done.stderr
    folder = sweep_folder(done.stdout)
    sweep = record(folder)
    assert sweep["backend"] == "modal" and all(t["state"] == "finished" for t in sweep["trials"])
    assert len(service.calls) == 3 and 0 < max(most) <= 2  # one call per trial, max_parallel at once
    for trial in sweep["trials"]:
        run = folder / trial["folder"]
        assert trial["folder"] == f"{folder.name}-trial-00{trial['number']}"  # its name on the volume, unique
        assert (run / "summary.json").is_file() and (run / "cost.json").is_file()  # brought back
        assert json.loads((run / "submission.json").read_text())["handles"]["modal_call_id"].startswith("fc-test-")
    assert "best: " in done.stdout


def test_a_modal_sweep_stops_at_its_budget_and_a_cancel_leaves_no_call_running(write_spec, container_modal,
                                                                                tmp_path):
    import threading

    from runner.reports.estimate import before_run
    from runner.spec.load import load_spec
    from runner.sweeps.lifecycle import cancel

    service = container_modal()
    long = modal_sweep_spec(write_spec, epochs=2000, model="cnn")
    estimate = before_run(load_spec(long).model_copy(update={"sweep": None}))["total_usd"]
    # room for one trial as estimated; a CNN's epoch takes this CPU many times what the catalog says
    # of an A10G, so its cost (the price per hour since it was submitted) reaches the budget while it runs
    budgeted = modal_sweep_spec(write_spec, epochs=2000, max_usd=round(1.2 * estimate, 6), model="cnn")
    stopped = cli("sweep", budgeted, "--runs-dir", tmp_path / "budget")
    assert stopped.exit_code == 4, stopped.stderr  # the budget's exit code
    folder = sweep_folder(stopped.stdout)
    sweep = record(folder)
    assert [t["state"] for t in sweep["trials"]] == ["cancelled"]  # no second trial: it would have passed the budget
    assert any(e["event"] == "budget" for e in sweep["events"])
    assert live_calls(service) == 0 and service.cancels  # stopped through FunctionCall.cancel: it checkpointed

    said = []

    def cancel_once_two_run() -> None:  # from another thread: `gpujob sweep cancel` signals this very process
        wait_for(lambda: live_calls(service) == 2, "two trials' calls running at once")
        (folder,) = list((tmp_path / "cancel").iterdir())
        said.append(cancel(folder))

    canceller = threading.Thread(target=cancel_once_two_run, daemon=True)
    canceller.start()
    cancelled = cli("sweep", modal_sweep_spec(write_spec, epochs=2000), "--runs-dir", tmp_path / "cancel")
    canceller.join(timeout=300)
    folder = sweep_folder(cancelled.stdout)
    assert cancelled.exit_code == 143 and said and f"cancelled {folder.name}" in said[0], (cancelled.stderr, said)
    assert live_calls(service) == 0  # the whole sweep stopped: no call left running
    assert sorted(t["state"] for t in record(folder)["trials"]) == ["cancelled", "cancelled"]


# ---- the pruner on backends that run trials elsewhere (Modal, Docker, vast.ai) ------------------

BAD_LR = 1e-6
PRUNED_RATES = [0.05, 0.02, BAD_LR]  # with seed 5 the grid runs the tiny rate third: two trials have ended


def pruned_sweep(write_spec, epochs: int = 40, **sections):
    """Epochs of a fifth of a second (batch 4): a trial pruned at epoch 2 or so is stopped well before its end."""
    return write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 4},
                      optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": epochs, "log_every_steps": 100},
                      sweep={"axes": {"optimizer.lr": PRUNED_RATES}, "max_parallel": 2, "pruner": "median",
                             "seed": 5}, **sections)


def assert_the_bad_trial_was_pruned(folder: Path, epochs: int = 40) -> dict:
    """The tiny rate's trial: pruned with the epoch judged, its curve to it, stopped with a checkpoint
    short of its end, told to Optuna as pruned; the others finished."""
    import optuna

    trials = record(folder)["trials"]
    assert [t["params"]["optimizer.lr"] for t in trials] == PRUNED_RATES, trials  # the grid's order for seed 5
    assert [t["state"] for t in trials] == ["finished", "finished", "pruned"], trials
    bad = trials[2]
    assert 2 <= bad["epochs"] < epochs and len(bad["curve"]) == bad["epochs"] and bad["value"] == bad["curve"][-1]
    assert f"pruned after epoch {bad['epochs']}" in bad["detail"]
    run = folder / bad["folder"]
    done = [r for r in read_jsonl_if(run / "metrics.jsonl") if r.get("kind") == "epoch"]
    assert bad["epochs"] <= len(done) < epochs  # it stopped soon after the judged epoch, not at its end
    assert sorted((run / "checkpoints").glob("step-*.pt")), "the cancel of a pruned trial checkpoints"
    events = json.loads((run / "submission.json").read_text())["events"]
    assert {"event": "pruned", "epoch": bad["epochs"]}.items() <= next(e for e in events if e["event"] == "pruned").items()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
    states = [t.state for t in optuna.load_study(study_name="sweep", storage=storage).get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    said = cli("status", run)  # the trial's own folder says who stopped it: not the user's cancel
    assert f"cancelled: by its sweep's pruner after epoch {bad['epochs']}" in said.stdout, said.stdout
    return bad


def test_a_modal_sweep_prunes_a_bad_trial_and_its_call_ends(write_spec, container_modal, tmp_path):
    service = container_modal()
    spec = pruned_sweep(write_spec, resources={"gpu": "A10G:1", "timeout_minutes": 20}, backend="modal")
    done = cli("sweep", spec, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 0, done.stderr
    folder = sweep_folder(done.stdout)
    bad = assert_the_bad_trial_was_pruned(folder)
    assert f"{bad['folder']} optimizer.lr=1e-06: test_loss" in done.stdout and "pruned after epoch" in done.stdout
    assert live_calls(service) == 0 and len(service.calls) == 3 and service.cancels  # nothing left running
    again = cli("sweep", "resume", folder)
    assert len(service.calls) == 3, again.stdout  # a pruned trial is never run again
    assert record(folder)["trials"][2]["state"] == "pruned"


def test_a_docker_sweep_prunes_a_bad_trial_and_its_container_ends(image, write_spec, tmp_path):
    spec = pruned_sweep(write_spec, backend="docker", docker={"image": image})
    done = cli_subprocess("sweep", spec, "--runs-dir", tmp_path / "runs", env=ONE_THREAD)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = sweep_folder(done.stdout)
    bad = assert_the_bad_trial_was_pruned(folder)
    container = json.loads((folder / bad["folder"] / "submission.json").read_text())["handles"]["container"]
    from runner.backends.docker.backend import container_state

    assert container_state(container)[0] in (None, "exited"), container  # stopped: nothing left running


def test_an_epoch_line_of_a_remote_job_reads_back_as_its_record():
    from runner.runs.lines import epoch_from_line, epoch_line

    record = {"epoch": 3, "loss": 0.123456, "test_loss": 0.5, "test_accuracy": 0.9512, "samples_per_s": 1234.0,
              "wall_s": 0.2, "metrics": {"aux": 0.25}, "test_metrics": {"f1": 0.77}, "stopped_by": "pruned"}
    assert epoch_from_line(epoch_line(record, 6)) == {
        "kind": "epoch", "epoch": 3, "loss": 0.1235, "test_loss": 0.5, "test_accuracy": 0.9512,
        "metrics": {"aux": 0.25}, "test_metrics": {"f1": 0.77}}
    assert epoch_from_line("step 5/100  epoch 1  loss 2.3000  lr 0.1  100 samples/s") is None
    assert epoch_from_line("epoch of reckoning") is None


# ---- vast.ai through its stand-in: an instance per trial, every one destroyed --------------------

from tests.test_vast import IMAGE, local_vast  # noqa: E402,F401  (the image's start script as the instance)


def vast_sweep_spec(write_spec, epochs: int):
    return write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                      train={"epochs": epochs, "log_every_steps": 5, "checkpoint_every_minutes": 10},
                      resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast", vast={"image": IMAGE},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05]}, "max_parallel": 2})


def live_instances(vast) -> list[int]:
    return [i for i, inst in vast.instances.items() if not inst["destroyed"]]


def test_a_vast_sweep_rents_an_instance_per_trial_and_a_cancel_leaves_none(write_spec, local_vast, tmp_path):
    import threading

    from runner.sweeps.lifecycle import cancel

    done = cli("sweep", vast_sweep_spec(write_spec, epochs=2), "--runs-dir", tmp_path / "done")
    assert done.exit_code == 0, done.stderr
    folder = sweep_folder(done.stdout)
    trials = record(folder)["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"]
    assert all((folder / t["folder"] / "summary.json").is_file() for t in trials)  # copied back
    assert len(local_vast.instances) == 2 and live_instances(local_vast) == []  # each destroyed once it ended

    said = []

    def cancel_once_both_run() -> None:
        wait_for(lambda: len(live_instances(local_vast)) == 2 and all(
            "step 5/" in local_vast.logs(i) for i in live_instances(local_vast)), "both trials' instances training")
        (folder,) = list((tmp_path / "cancel").iterdir())
        said.append(cancel(folder))

    canceller = threading.Thread(target=cancel_once_both_run, daemon=True)
    canceller.start()
    stopped = cli("sweep", vast_sweep_spec(write_spec, epochs=400), "--runs-dir", tmp_path / "cancel")
    canceller.join(timeout=300)
    assert stopped.exit_code == 143 and said, (stopped.stderr, said)
    assert live_instances(local_vast) == []  # nothing left renting
    assert [t["state"] for t in record(sweep_folder(stopped.stdout))["trials"]] == ["cancelled", "cancelled"]


def test_a_vast_sweep_prunes_a_bad_trial_and_destroys_its_instance(write_spec, local_vast, tmp_path):
    spec = pruned_sweep(write_spec, resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast",
                        vast={"image": IMAGE})
    done = cli("sweep", spec, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 0, done.stderr
    assert_the_bad_trial_was_pruned(sweep_folder(done.stdout))
    assert live_instances(local_vast) == []  # the pruned trial's instance too: nothing left renting
    assert rents(local_vast) == 2  # the pruned trial stopped alone, on an instance of the sweep's two


def pooled_vast_spec(write_spec, epochs: int, name: str = "job.yaml"):
    return write_spec(name, model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 4},
                      train={"epochs": epochs, "log_every_steps": 50, "checkpoint_every_minutes": 10},
                      resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast", vast={"image": IMAGE},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05, 0.02, 0.01]}, "max_parallel": 2})


def rents(vast) -> int:
    return sum(1 for call in vast.calls if call[0] == "create")


def test_a_vast_sweep_runs_its_trials_in_turn_on_max_parallel_instances(write_spec, local_vast, tmp_path,
                                                                         monkeypatch):
    from collections import Counter

    from runner.backends.registry import get_backend
    from runner.runs import record as run_record
    from runner.runs.state import Run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the instances' jobs and the lone run below do the same maths
    done = cli("sweep", pooled_vast_spec(write_spec, epochs=2), "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 0, done.stderr
    folder = sweep_folder(done.stdout)
    trials = record(folder)["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 4, trials
    assert rents(local_vast) == 2 and live_instances(local_vast) == []  # two rentals, both destroyed at the end
    ran_on = Counter(json.loads((folder / t["folder"] / "submission.json").read_text())["handles"]["vast_instance_id"]
                     for t in trials)
    assert sorted(ran_on.values()) == [2, 2], ran_on  # each instance ran two trials in turn
    for trial in trials:
        run = folder / trial["folder"]
        assert (run / "summary.json").is_file() and (run / "cost.json").is_file()  # copied back, its own cost
        assert f"gpujob-vast: start {trial['folder']}" in (run / "vast.log").read_text()  # its part of the output
        shown = cli("status", run)
        assert shown.exit_code == 0 and "finished" in shown.stdout, shown.stdout  # an ordinary run folder
        assert get_backend("vast").kept_elsewhere(Run(run, run_record.read(run))) is None  # nothing of its own there
    second = next(t for t in trials if (folder / t["folder"] / "vast.log").read_text().count("gpujob-vast: start") == 1
                  and t["number"] >= 2)  # a trial that ran second on its instance
    alone = cli("submit", folder / second["folder"] / "job" / "spec.yaml", "--runs-dir", tmp_path / "alone")
    assert alone.exit_code == 0, alone.stderr
    (lone,) = (tmp_path / "alone").iterdir()
    assert read_jsonl_if(lone / "metrics.jsonl")[-1]["test_loss"] == second["value"]  # as it trains alone
    assert live_instances(local_vast) == []


def test_a_vast_sweep_stopped_by_its_budget_leaves_no_instance(write_spec, local_vast, tmp_path):
    from runner.reports.estimate import before_run
    from runner.spec.load import load_spec

    def spec(max_usd=None):
        # Batches of 256: each step is FLOP-heavy, so this CPU takes far longer than the catalog's A10G
        # (minutes for the first trial by a rough count, against a few seconds estimated): the budget, room for
        # one trial as estimated, stops it however fast or loaded the machine is (at 300 epochs of 32,
        # a quiet machine finished the trial before its budget ran out).
        return write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 256},
                          train={"epochs": 1000, "log_every_steps": 50, "checkpoint_every_minutes": 10},
                          resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast", vast={"image": IMAGE},
                          sweep={"axes": {"optimizer.lr": [0.1, 0.05, 0.02]}, "max_parallel": 1,
                                 **({"max_usd": max_usd} if max_usd else {})})

    estimate = before_run(load_spec(spec()).model_copy(update={"sweep": None}))["total_usd"]
    # room for one trial as estimated: a CNN's epoch takes this CPU many times what the catalog says of an A10G
    stopped = cli("sweep", spec(round(1.2 * estimate, 6)), "--runs-dir", tmp_path / "budget")
    assert stopped.exit_code == 4, stopped.stderr  # the budget's exit code
    folder = sweep_folder(stopped.stdout)
    assert [t["state"] for t in record(folder)["trials"]] == ["cancelled"], stopped.stderr[-3000:]
    assert any(e["event"] == "budget" for e in record(folder)["events"])
    assert rents(local_vast) == 1 and live_instances(local_vast) == []  # nothing left renting


def test_a_vast_sweep_rents_anew_when_its_idle_instance_has_ended(write_spec, local_vast, tmp_path, monkeypatch):
    """An instance left idle ends its container (GPUJOB_POOL_IDLE_S; here at once): the next trial
    is not sent to it, which would never run it; it is destroyed and another rented."""
    monkeypatch.setenv("GPUJOB_POOL_IDLE_S", "0")  # the instances' environment is this process's
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      train={"epochs": 1, "log_every_steps": 50}, resources={"gpu": "A10G:2", "timeout_minutes": 5},
                      backend="vast", vast={"image": IMAGE},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05]}, "max_parallel": 1})
    done = cli("sweep", spec, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 0, done.stderr
    assert [t["state"] for t in record(sweep_folder(done.stdout))["trials"]] == ["finished", "finished"]
    assert "is exited; destroying it" in done.stderr
    assert rents(local_vast) == 2 and live_instances(local_vast) == []


def _sweep_cancelled_once(spec, runs: Path, what: str, ready):
    """`gpujob sweep SPEC` run here, and `gpujob sweep cancel` from another thread once `ready()`:
    the sweep's result, which must be the cancel's exit code."""
    import threading

    from runner.sweeps.lifecycle import cancel

    said = []

    def cancel_when_ready() -> None:
        wait_for(ready, what, timeout=300)
        (folder,) = list(runs.iterdir())
        said.append(cancel(folder))

    canceller = threading.Thread(target=cancel_when_ready, daemon=True)
    canceller.start()
    stopped = cli("sweep", spec, "--runs-dir", runs)
    canceller.join(timeout=300)
    assert stopped.exit_code == 143 and said, (stopped.stderr, said)
    return stopped


def test_a_resumed_vast_sweep_continues_its_cancelled_trial_on_the_instance_it_keeps(write_spec, local_vast,
                                                                                     tmp_path):
    """Cancelled while its first trial trains, then resumed: that trial continues from its
    checkpoint on the resumed sweep's one instance, and the next trial follows it there."""
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 4},
                      train={"epochs": 30, "log_every_steps": 50, "checkpoint_every_minutes": 10},
                      resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast", vast={"image": IMAGE},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05]}, "max_parallel": 1})
    stopped = _sweep_cancelled_once(spec, tmp_path / "runs", "the first trial training",
                                    lambda: 101 in local_vast.instances and "step 50/" in local_vast.logs(101))
    folder = sweep_folder(stopped.stdout)
    assert [t["state"] for t in record(folder)["trials"]] == ["cancelled"] and live_instances(local_vast) == []
    resumed = cli("sweep", "resume", folder)
    assert resumed.exit_code == 0, resumed.stderr
    trials = record(folder)["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"] and all(t["epochs"] == 30 for t in trials)
    assert rents(local_vast) == 2 and live_instances(local_vast) == []  # one before the cancel, one after
    first = json.loads((folder / trials[0]["folder"] / "submission.json").read_text())
    assert any(e["event"] == "cancel asked" for e in first["events"])
    assert (folder / trials[0]["folder"] / "vast.log").read_text().count("gpujob-vast: start") == 2  # two attempts


def vast_sweep_killed_between_trials(write_spec, local_vast, tmp_path, monkeypatch) -> Path:
    """A driver killed (kill -9) between trials cannot destroy the instance it keeps idle. Killed
    here: the first trial's end raises, and nothing closes the pool."""
    from runner.backends.vast import pool
    from runner.sweeps import remote

    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                      train={"epochs": 2, "log_every_steps": 50, "checkpoint_every_minutes": 10},
                      resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast", vast={"image": IMAGE},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05]}, "max_parallel": 1})
    recorded = remote.finish_trial

    def killed_after_the_first(folder, number, outcome):
        recorded(folder, number, outcome)
        raise SystemExit(137)

    monkeypatch.setattr(remote, "finish_trial", killed_after_the_first)
    monkeypatch.setattr(pool, "close", lambda api, kept: None)
    killed = cli("sweep", spec, "--runs-dir", tmp_path / "runs")
    assert killed.exit_code == 137, killed.stderr
    assert live_instances(local_vast) == [101]  # left idle, billing
    monkeypatch.undo()
    (folder,) = (tmp_path / "runs").iterdir()
    return folder


def test_a_killed_drivers_idle_instance_is_taken_back_by_the_resumed_sweep_and_destroyed(write_spec, local_vast,
                                                                                         tmp_path, monkeypatch):
    """The resumed sweep finds the idle instance in its trials' records, runs the next trial there
    (no second rental) and destroys it at the end."""
    folder = vast_sweep_killed_between_trials(write_spec, local_vast, tmp_path, monkeypatch)
    resumed = cli("sweep", "resume", folder)
    assert resumed.exit_code == 0, resumed.stderr
    assert [t["state"] for t in record(folder)["trials"]] == ["finished", "finished"]
    assert rents(local_vast) == 1 and live_instances(local_vast) == []  # the second trial ran on it, then it went
    second = json.loads((folder / record(folder)["trials"][1]["folder"] / "submission.json").read_text())
    assert second["handles"]["vast_instance_id"] == 101


def test_a_cancel_of_a_sweep_whose_driver_was_killed_destroys_the_idle_instance_it_left(write_spec, local_vast,
                                                                                       tmp_path, monkeypatch):
    """Without a resume, `sweep cancel` destroys it: its disk bills no more (it was left billing)."""
    folder = vast_sweep_killed_between_trials(write_spec, local_vast, tmp_path, monkeypatch)
    cancelled = cli("sweep", "cancel", folder)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert live_instances(local_vast) == [] and rents(local_vast) == 1
    assert "destroyed instance 101" in cancelled.stderr
    again = cli("sweep", "resume", folder)  # the destroyed instance is not taken back: the last trial rents anew
    assert again.exit_code == 0, again.stderr
    assert rents(local_vast) == 2 and live_instances(local_vast) == []


def test_a_queued_trial_on_a_sweeps_instance_gets_its_own_meter_not_the_first_trials():
    from runner.training.meter import BILLED_SINCE, MAX_USD, PRICE

    script = (REPO / "images" / "vast-start.sh").read_text()
    assert f"unset {PRICE} {BILLED_SINCE} {MAX_USD}" in script  # the container's env is the first trial's


def test_an_instances_output_is_shared_out_between_the_runs_it_ran_in_turn():
    from runner.backends.vast.following import exit_code, own_lines

    log = ["gpujob-vast: waiting for the run folder or the job's code to be sent", "gpujob-vast: start a",
           "epoch 1/2  a", "gpujob-vast: exit 0", "gpujob-vast: start b", "epoch 1/2  b"]
    assert own_lines(log, "a") == log[:4] and exit_code(own_lines(log, "a")) == 0
    assert own_lines(log, "b") == log[4:] and exit_code(own_lines(log, "b")) is None  # b still runs
    assert own_lines(log[4:], "a") == [] and own_lines(log[:1], "a") == log[:1]  # a window of others'; before any mark


def test_a_cancelled_pooled_vast_sweep_leaves_no_instance(write_spec, local_vast, tmp_path):
    """One instance (max_parallel 1): a short trial, then a long one sent to the same instance,
    cancelled while it trains there."""
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 4},
                      train={"epochs": 2, "log_every_steps": 50, "checkpoint_every_minutes": 10},
                      resources={"gpu": "A10G:2", "timeout_minutes": 5}, backend="vast", vast={"image": IMAGE},
                      sweep={"axes": {"train.epochs": [2, 400]}, "max_parallel": 1, "seed": 1})  # seed 1: 2 first

    def second_trial_training() -> bool:
        taken = list(local_vast.root.glob("instance-*/workspace/job/queue/*/.gpujob-taken"))
        return bool(taken) and "step 50/" in local_vast.logs(101).split(f"gpujob-vast: start {taken[0].parent.name}")[-1]

    stopped = _sweep_cancelled_once(spec, tmp_path / "cancel",
                                    "the second trial training on the instance the first ran on", second_trial_training)
    assert rents(local_vast) == 1 and live_instances(local_vast) == []  # one rental, destroyed: nothing left renting
    folder = sweep_folder(stopped.stdout)
    trials = record(folder)["trials"]
    assert [(t["params"]["train.epochs"], t["state"]) for t in trials] == [(2, "finished"), (400, "cancelled")]
    assert sorted((folder / trials[1]["folder"] / "checkpoints").glob("step-*.pt"))  # it stopped with a checkpoint


def modal_sweep_killed_mid_trial(write_spec, tmp_path, epochs: int) -> Path:
    """A sweep whose driver was killed (kill -9) while its first trial's call ran on Modal: the call
    runs on, and the trial's owner is a process that has ended."""
    from runner.backends.registry import get_backend
    from runner.cli.app import load_job
    from runner.sweeps import claims, driver
    from runner.sweeps import record as rec
    from runner.sweeps.remote import remote_trial_name, start_trial

    spec = modal_sweep_spec(write_spec, epochs=epochs, rates=(0.1, 0.05))
    plan = driver.plan_sweep(load_job(spec, []), spec, tmp_path / "runs", [], None, None)
    folder = driver.start(plan)
    claim = claims.claim_next(folder, naming=lambda n: remote_trial_name(folder, n))
    start_trial(folder, claim.number, claim.params, get_backend("modal"))  # what the driver did before it died
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with rec.updating(folder) as sweep:  # its owner: a process that has ended, as a killed driver has
        sweep.trials[0].owner = {**sweep.trials[0].owner, "pid": int(gone.stdout), "started": 1}
    return folder


def test_a_resumed_modal_sweep_follows_a_trial_still_running_there_instead_of_starting_it_again(
        write_spec, container_modal, tmp_path):
    """`sweep resume` takes the killed driver's call up where it runs; it never spawns a second call into the same run."""
    service = container_modal()
    folder = modal_sweep_killed_mid_trial(write_spec, tmp_path, epochs=30)
    assert len(service.calls) == 1 and live_calls(service) == 1

    resumed = cli("sweep", "resume", folder)
    assert resumed.exit_code == 0, resumed.stderr
    assert len(service.calls) == 2  # trial 0's call followed to its end, one new call for trial 1
    trials = record(folder)["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"]
    assert all((folder / t["folder"] / "summary.json").is_file() for t in trials)


def test_a_cancel_of_a_sweep_whose_driver_was_killed_ends_the_call_it_left_running(write_spec, container_modal,
                                                                                    tmp_path):
    """A killed driver could not cancel its trial's call, which bills on: `sweep cancel` finds the
    live call from the trial's record and cancels it (it said 'not running; nothing to cancel')."""
    service = container_modal()
    folder = modal_sweep_killed_mid_trial(write_spec, tmp_path, epochs=2000)
    assert live_calls(service) == 1
    cancelled = cli("sweep", "cancel", folder)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert f"cancelled {folder.name} (its driver had stopped)" in cancelled.stdout, cancelled.stdout
    assert live_calls(service) == 0 and service.cancels  # nothing left billing
    trial = folder / record(folder)["trials"][0]["folder"]
    said = cli("status", trial).stdout
    assert "cancelled: by `gpujob cancel`" in said and "cancelled: cancelled" not in said, said
    assert "cancelled" in cli("sweep", "status", folder).stdout


def test_a_slurm_sweep_runs_its_array_on_the_two_node_partition(slurm_cluster, slurm_nodes, write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": 2, "log_every_steps": 10},
                      backend="slurm", slurm={"partition": "multi"},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05, 0.02]}, "max_parallel": 2, "pruner": "median"})
    done = cli_subprocess("sweep", spec, "--runs-dir", tmp_path / "runs", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    folder = sweep_folder(done.stdout)
    trials = record(folder)["trials"]
    assert len(trials) == 3 and all(t["state"] == "finished" for t in trials)
    hosts = {json.loads((folder / t["folder"] / "submission.json").read_text())["handles"]["host"] for t in trials}
    assert hosts <= set(slurm_nodes), hosts  # trained on the partition's nodes, not here
    assert "#SBATCH --array=0-2%2" in (folder / "job" / "sweep.sbatch").read_text()


# ---- Kaggle: one kernel that runs the trials in turn -------------------------------------------

from tests.test_kaggle import stub_pip  # noqa: E402,F401  (pip stood in for: the kernel installs nothing)


def test_a_kaggle_kernel_runs_the_whole_sweep_in_turn(write_spec, tmp_path, stub_pip):
    from runner.backends.kaggle.export import CODE_FILE

    sections = dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                    optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": 2, "log_every_steps": 5},
                    resources={"gpu": "T4:1"})
    spec = write_spec(**sections, sweep={"axes": {"optimizer.lr": [0.1, 0.05]}})
    bad = cli("export", "kaggle", write_spec("bad.yaml", **sections, sweep={"axes": {"optimizer.lrr": [1]}}),
              tmp_path / "bad", "--sweep")
    assert bad.exit_code == 2 and "optimizer.lrr" in bad.stderr and not (tmp_path / "bad").exists()
    exported = cli("export", "kaggle", spec, tmp_path / "kernel", "--sweep")
    assert exported.exit_code == 0, exported.stderr
    assert "the sweep folder is runs/test-job-sweep-*/" in exported.stdout
    working = tmp_path / "working"
    stub, _calls = stub_pip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUJOB_KAGGLE_SKIP_INSTALL")}
    env.update(GPUJOB_KAGGLE_OUTPUT=str(working), PYTHONPATH=str(stub), **ONE_THREAD)
    out = subprocess.run([sys.executable, str(tmp_path / "kernel" / CODE_FILE)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (folder,) = (working / "runs").glob("test-job-sweep-*")
    trials = record(folder)["trials"]
    assert sorted(t["params"]["optimizer.lr"] for t in trials) == [0.05, 0.1]
    assert all(t["state"] == "finished" for t in trials)
    assert (folder / "best.yaml").is_file() and (folder / "sweep.png").is_file()
    pids = {json.loads((folder / t["folder"] / "submission.json").read_text())["handles"]["pid"] for t in trials}
    assert len(pids) == 1  # one process: the trials in turn


# ---- Docker: a container per trial, at most max_parallel at once ---------------------------------

def test_a_docker_sweep_runs_each_trial_in_a_container_of_its_own(image, write_spec, tmp_path):
    spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": 2, "log_every_steps": 10},
                      backend="docker", docker={"image": image},
                      sweep={"axes": {"optimizer.lr": [0.1, 0.05]}, "max_parallel": 2})
    done = cli_subprocess("sweep", spec, "--runs-dir", tmp_path / "runs", env=ONE_THREAD)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = sweep_folder(done.stdout)
    trials = record(folder)["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"], trials
    for trial in trials:
        handles = json.loads((folder / trial["folder"] / "submission.json").read_text())["handles"]
        assert handles.get("container"), handles  # each trial its own container
        assert (folder / trial["folder"] / "summary.json").is_file()
    assert "best: " in done.stdout
