"""Each worker's intra-op threads are chosen, recorded and diagnosed (issue 29: a one-worker job
ran 30x slower with torch's default threads than with OMP_NUM_THREADS=1, and `show` said "no
bottleneck found")."""

from __future__ import annotations

import json
import os

import pytest

from runner.reports.diagnosis import diagnose, lines
from runner.training.threads import choose_threads, cores_available
from tests.conftest import cli


def test_each_worker_gets_its_share_of_the_cores_and_a_users_choice_is_kept():
    assert choose_threads(2, {}, cores=2).threads == 1
    assert choose_threads(1, {}, cores=8).threads == 8
    assert choose_threads(3, {}, cores=2).threads == 1  # never zero
    mine = choose_threads(2, {"OMP_NUM_THREADS": "3"}, cores=2)
    assert mine.threads == 3 and "kept" in mine.why


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_the_cores_counted_are_those_this_process_may_run_on():
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert cores_available() == 1
        assert choose_threads(1, {}).threads == 1  # a container's or taskset's CPU set, not the machine's
    finally:
        os.sched_setaffinity(0, mask)


def test_two_workers_on_two_cores_run_one_thread_each_and_env_json_says_why(write_spec, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("runner.launching.launcher.machine_load", lambda: 0.0)  # a quiet machine's choice
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("needs two cores")
    os.sched_setaffinity(0, set(sorted(mask)[:2]))  # the workers inherit it: two cores, whatever the machine
    try:
        spec = write_spec(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
                          resources={"processes": 2}, train={"epochs": 1, "max_steps": 4, "log_every_steps": 2})
        result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    finally:
        os.sched_setaffinity(0, mask)
    assert result.exit_code == 0, result.stderr
    threads = json.loads((result.run_dir / "env.json").read_text())["threads"]
    assert threads["intra_op"] == 1 and threads["cores_available"] == 2 and threads["workers_on_node"] == 2
    assert threads["why"] == "2 core(s) available / 2 worker(s) on this node"
    # the run's own diagnosis and `show`'s read the record; an honest one is no finding
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert all(f["kind"] != "threads-oversubscribed" for f in summary["diagnosis"])

    env = json.loads((result.run_dir / "env.json").read_text())
    env["threads"].update(intra_op=4, why="OMP_NUM_THREADS=4 was set before gpujob started; kept")
    (result.run_dir / "env.json").write_text(json.dumps(env))
    shown = cli("show", result.run_dir)
    assert shown.exit_code == 0, shown.stderr
    assert "threads-oversubscribed: 2 worker(s) ran 4 intra-op thread(s) each on 2 core(s)" in shown.stdout
    assert "OMP_NUM_THREADS=1" in shown.stdout


def test_the_diagnosis_names_threads_that_fight_even_when_compute_looks_busy():
    timing = {"epochs": [{"wall_s": 10.0, "data_s": 0.1}], "total_s": 11.0, "time_to_first_step_s": 0.5}
    summary = {"world_size": 1, "device": "cpu"}
    fighting = {"threads": {"intra_op": 16, "cores_available": 4, "workers_on_node": 1, "why": "torch's default"}}
    said = lines(diagnose(summary, timing, {}, fighting))
    assert said[0].startswith("threads-oversubscribed: 1 worker(s) ran 16 intra-op thread(s) each on 4 core(s)")
    assert "OMP_NUM_THREADS=4" in said[0]
    fitting = {"threads": {"intra_op": 4, "cores_available": 4, "workers_on_node": 1}}
    assert lines(diagnose(summary, timing, {}, fitting))[0].startswith("no bottleneck found")


def test_an_env_json_without_a_usable_thread_record_is_no_finding():
    timing = {"epochs": [{"wall_s": 10.0}], "total_s": 11.0, "time_to_first_step_s": 0.5}
    for environment in (None, {}, {"threads": "16"}, {"threads": {"intra_op": "16", "cores_available": 4}},
                        {"threads": {"intra_op": 16, "cores_available": 0, "workers_on_node": 1}}):
        assert lines(diagnose({"world_size": 1}, timing, {}, environment))[0].startswith("no bottleneck found")


def test_cores_other_processes_keep_busy_are_not_given_to_the_workers():
    """One worker ran 30x slower with two threads at load 1.5 on 2 cores than with one."""
    busy = choose_threads(1, {}, cores=2, load=1.5)
    assert busy.threads == 1 and "busy with other processes (load 1.5)" in busy.why
    assert choose_threads(1, {}, cores=2, load=0.2).threads == 2  # a quiet machine: all of its cores
    assert choose_threads(2, {}, cores=8, load=4.0).threads == 2  # 4 of 8 free, shared by 2 workers
    assert choose_threads(1, {}, cores=2, load=9.0).threads == 1  # never zero
    assert choose_threads(1, {"OMP_NUM_THREADS": "2"}, cores=2, load=9.0).threads == 2  # the user's, kept


def test_a_resume_runs_the_threads_its_run_ran_whatever_the_load_now(write_spec, tmp_path, monkeypatch):
    """Threads follow the machine's load, and another count sums a step in another order: a run
    resumed under another load trained on 1e-8 apart from the run it continues (seen in the
    budget tests). A resume takes the count its run recorded in env.json, with as many workers;
    a fresh run, another worker count or the user's OMP_NUM_THREADS choose as before."""
    from runner.launching import launcher
    from runner.launching.launcher import Launch
    from runner.launching.topology import Topology
    from runner.spec.load import load_spec
    from runner.training.threads import THREADS_WHY

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launcher, "machine_load", lambda: 0.0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "env.json").write_text(json.dumps({"threads": {"intra_op": 7, "workers_on_node": 1,
                                                          "cores_available": 8, "why": "then"}}))
    spec = load_spec(write_spec())

    def threads(resume: bool, workers: int = 1) -> tuple[str, str]:
        env = Launch(spec, Topology(workers), run, resume=resume)._worker_env(0, 29500)
        return env["OMP_NUM_THREADS"], env[THREADS_WHY]

    assert threads(resume=True) == ("7", "7 as the run's earlier attempt ran (env.json), so that the resumed run "
                                         "computes as it did")
    fresh = str(choose_threads(1, {}, load=0.0).threads)
    assert threads(resume=False)[0] == fresh
    assert threads(resume=True, workers=2)[0] == str(choose_threads(2, {}, load=0.0).threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads(resume=True)[0] == "3"
