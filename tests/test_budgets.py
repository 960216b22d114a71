"""resources.max_usd (docs/targets-and-budgets.md): a rented run checkpoints and stops (exit 4)
before its cost passes the budget, a resume keeps the budget unless it raises it, and a run
resumed under a raised budget ends as one that never stopped; where nothing is rented, a budget
is refused."""

import json
import time

import pytest

from runner.errors import BUDGET_REACHED
from runner.training.meter import Budget, Meter, spent_before
from tests.conftest import cli
from tests.test_modal import container_modal, volume  # noqa: F401 (fixtures)
from tests.test_vast import local_vast, vast_spec  # noqa: F401 (fixtures)

TINY = 0.0001  # US$: less than any start-up costs, so the job stops at its first decision


def test_the_budget_looks_ahead_and_counts_each_earlier_submission_once():
    now = time.time()
    meter = Meter(usd_per_hour=360.0, billed_since=now - 10)  # $0.10 a second, $1 so far
    budget = Budget(meter, max_usd=2.0, save_s=2)
    budget.count_earlier([{"billing": {"since": now - 100, "usd": 0.2}},
                          {"billing": {"since": now - 100, "usd": 0.5}},  # a retry of that submission
                          {"billing": {"since": now - 10, "usd": 0.3}},  # this submission's own
                          {"total_s": 5.0}])  # an attempt nothing priced
    assert budget.earlier_usd == pytest.approx(0.5)
    assert budget.spent() == pytest.approx(1.5, abs=0.01)
    assert not budget.would_pass(ahead_s=2)  # 1.5 + 0.4 <= 2
    assert budget.would_pass(ahead_s=4)  # 1.5 + 0.6 > 2
    assert spent_before([], meter) == 0


@pytest.mark.parametrize("backend", ["local", "docker", "slurm"])
def test_a_budget_where_nothing_is_rented_is_refused(write_spec, backend):
    result = cli("submit", write_spec(backend=backend, resources={"max_usd": 5}), "--dry-run")
    assert result.exit_code == 2 and "resources.max_usd: backend " + backend in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_gpujob_run_here_refuses_a_budget(write_spec, tmp_path):
    result = cli("run", write_spec(resources={"max_usd": 5}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "resources.max_usd: `gpujob run` here" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing made


def _sections(**resources):
    return dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                optimizer={"name": "sgd", "lr": 0.05},
                train={"epochs": 2, "log_every_steps": 5, "checkpoint_every_minutes": 10, "stop_grace_s": 1},
                resources={"timeout_minutes": 20, **resources})


def _final(run) -> tuple:
    summary = json.loads((run / "summary.json").read_text())
    return summary["train_loss"], summary["test_loss"], summary["steps"]


def _stops_then_resumes(spec, runs, reference) -> dict:
    """Submit under a budget smaller than its start-up: it stops with a checkpoint (exit 4); a
    resume under the same budget stops again; one under a raised budget ends as `reference`."""
    stopped = cli("submit", spec, "--runs-dir", runs)
    run = stopped.run_dir
    assert stopped.exit_code == BUDGET_REACHED, stopped.stderr
    (said,) = [line for line in stopped.stderr.splitlines() if "budget reached" in line]
    assert "budget reached: about $" in said and f"of resources.max_usd ${TINY} spent" in said, said
    assert f"gpujob resume {run} --set resources.max_usd=" in said, said
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "summary.json").exists()
    status = cli("status", run).stdout
    assert status.startswith(f"{run.name}: over budget: ") and "resources.max_usd=" in status, status

    again = cli("resume", run)  # the budget is the run's, across resumes
    assert again.exit_code == BUDGET_REACHED and "budget reached" in again.stderr, again.stderr
    lower = cli("resume", run, "--set", f"resources.max_usd={TINY}")
    assert lower.exit_code == 2 and "give more to continue it" in lower.stderr

    raised = cli("resume", run, "--set", "resources.max_usd=5")
    assert raised.exit_code == 0, raised.stderr
    assert _final(run) == _final(reference)  # the same losses as a run that never stopped
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 2 and 0 < summary["usd"] < 5
    record = json.loads((run / "submission.json").read_text())
    assert record["asks"]["max_usd"] == 5
    return summary


@pytest.fixture
def same_threads(monkeypatch):
    """The reference and the stopped run are two runs, each choosing its threads from the load as
    it starts; another count sums a step in another order (seen: a final loss 1e-8 apart)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_modal_stops_at_its_budget_and_resumes_under_a_raised_one(write_spec, container_modal, tmp_path,
                                                                    same_threads):
    container_modal()
    reference = cli("run", write_spec("plain.yaml", **_sections()), "--runs-dir", tmp_path / "plain")
    assert reference.exit_code == 0, reference.stderr
    spec = write_spec(**_sections(gpu="A10G:1", max_usd=TINY), backend="modal")
    _stops_then_resumes(spec, tmp_path / "runs", reference.run_dir)


def test_vast_stops_at_its_budget_and_resumes_under_a_raised_one(write_spec, local_vast, tmp_path, same_threads):
    from tests.test_vast import IMAGE

    reference = cli("run", write_spec("plain.yaml", **_sections()), "--runs-dir", tmp_path / "plain")
    assert reference.exit_code == 0, reference.stderr
    spec = write_spec(**_sections(gpu="A10G:2", max_usd=TINY), backend="vast", vast={"image": IMAGE})
    _stops_then_resumes(spec, tmp_path / "runs", reference.run_dir)
    assert all("GPUJOB_USD_PER_HOUR" in env and "GPUJOB_MAX_USD" in env for env in local_vast.envs)
    assert [env["GPUJOB_MAX_USD"] for env in local_vast.envs] == [repr(TINY), repr(TINY), "5.0"]


def test_the_dry_run_refuses_a_budget_below_the_start_up_and_one_epoch(write_spec, tmp_path):
    spec = write_spec(**_sections(gpu="A10G:1", max_usd=0.001), backend="modal")
    refused = cli("submit", spec, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert refused.exit_code == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("gpujob: resources.max_usd: $0.0010 does not pay for the start-up and one epoch (about $")
    assert "s billed start-up + ~" in line and "at $1.10/h" in line
    enough = cli("submit", spec, "--dry-run", "--set", "resources.max_usd=1", "--runs-dir", tmp_path / "runs")
    assert enough.exit_code == 0, enough.stderr


def test_every_ddp_rank_stops_at_the_budget_with_rank_0s_checkpoint(write_spec, tmp_path):
    """As a rented backend runs the job: told its price and budget, two workers stop together."""
    from runner.training.meter import Meter
    from tests.conftest import cli_subprocess

    told = Meter(usd_per_hour=3600.0, billed_since=time.time(), max_usd=1.0).env()  # $1 a second: spent at start-up
    spec = write_spec(**_sections())
    done = cli_subprocess("run", spec, "--runs-dir", tmp_path / "runs", "--nproc-per-node", "2", env=told)
    assert done.returncode == BUDGET_REACHED, done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert "gpujob: budget reached: about $" in done.stderr and "of resources.max_usd $1.00 spent" in done.stderr
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "summary.json").exists()
