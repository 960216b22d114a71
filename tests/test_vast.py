"""The vast.ai backend against a fake vast.ai: the offer query a spec builds, the offer it picks,
the instance it asks for, and that the instance is destroyed on every way out. The fake has
VastApi's methods and records each call; offers and the instance's life are given as data."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from runner.backends.vast import copying as vast_copying
from runner.backends.vast.backend import VastBackend
from runner.backends.vast.following import (EXIT_MARK, EXITED_GRACE_S, NOT_STARTED, RUN_GRACE_S, START_MARK, exit_code,
                                            new_lines)
from runner.backends.vast.request import instance_request
from runner.errors import PREEMPTED
from runner.errors import GpujobError, job_failed, missing_backend
from runner.spec.load import load_spec
from runner.backends.vast.api import NO_API_KEY, VastUnavailable, find_api_key
from runner.backends.vast.offers import bid_price, choose_offer, offer_query
from tests.conftest import REPO, cli, read_jsonl

IMAGE = "docker.io/alice/gpujob:1"


def offer(id, gpu="A10", n=2, dph=1.0, min_bid=0.5, reliability=0.995, disk=100.0, cuda=13.2, ram_mb=24576,
          days=30.0, **extra):
    return {"id": id, "gpu_name": gpu, "num_gpus": n, "dph_total": dph, "min_bid": min_bid, "reliability": reliability,
            "disk_space": disk, "cuda_max_good": cuda, "rentable": True, "geolocation": "Oregon, US",
            "gpu_ram": ram_mb, "duration": days * 86400, "storage_cost": 0.15, **extra}


GOOD = [offer(11, dph=0.90), offer(12, dph=0.80, reliability=0.99), offer(13, dph=0.80, reliability=0.999)]


class FakeVast:
    """VastApi's methods over a scripted instance life: each show_instance() is one tick of
    `timeline`, a list of (actual_status, log lines so far); the last tick repeats.

    The instance's disk holds what its job has written by the current tick, and copy_back copies
    only that: nothing before the container ran; `partial_files` (metrics, a checkpoint) while
    the job runs or after a stop without a final exit (SIGTERM's 143, a killed container);
    `run_files` once its last attempt has exited for good (summary.json on exit 0, error.log on
    a failure). So a copy that is skipped, or made before the job ended, leaves no summary.json.
    An instance destroyed (here, or outside gpujob: `made.clear()`) shows as {} and has no disk."""

    def __init__(self, offers=GOOD, timeline=(), fail=(), run_files=None, interrupt_at=None, flaky=None):
        self.offers, self.timeline, self.fail = list(offers), list(timeline), set(fail)
        self.flaky = dict(flaky or {})  # call name -> how many times in a row it fails transiently first
        summary = {"epochs": 1, "train_loss": 0.35, "test_accuracy": 0.9, "test_loss": 0.3, "wall_s": 60.0,
                   "device": "cuda", "world_size": 2}
        self.run_files = {"summary.json": json.dumps(summary), "spec.yaml": "name: x\n"} if run_files is None else run_files
        self.partial_files = {"metrics.jsonl": '{"kind": "step", "step": 1}\n', "checkpoints/step-00000001.pt": "w"}
        self.calls: list[tuple] = []
        self.tick, self.now, self.interrupt_at = -1, 0.0, interrupt_at
        self.made: dict[int, str] = {}  # instance id -> label
        self.new_id = 42  # the id the next rent makes
        self.copied_at: list[int] = []  # the tick each copy_back saw

    def _maybe_fail(self, name):
        if self.flaky.get(name, 0) > 0:  # a timeout, a 429, a 5xx: what vast.ai does now and then
            self.flaky[name] -= 1
            self.calls.append((f"{name} failed",))
            raise VastUnavailable(f"vast: {name}: vast.ai answered HTTP 503 (fake)")
        if name in self.fail:
            raise job_failed(f"vast: {name} failed (fake)")

    def names(self):
        return [call[0] for call in self.calls]

    def disk(self) -> dict[str, str] | None:
        """The run folder on the instance's disk now: None before the container ever ran."""
        ran = [lines for status, lines in self.timeline[:self.tick + 1] if lines or status not in NOT_STARTED]
        if not ran:
            return None
        code = exit_code(ran[-1])
        return self.run_files if code is not None and code != PREEMPTED else self.partial_files

    def search_offers(self, query, offer_type, disk_gb, order):
        self._maybe_fail("search")
        self.calls.append(("search", query, offer_type, disk_gb, order))
        return self.offers

    def check_can_copy(self):
        self._maybe_fail("check copy")
        self.calls.append(("check copy",))
        if "no ssh key" in self.fail:
            raise missing_backend("vast: your vast.ai account has no ssh key ...: vastai create ssh-key")

    def create_instance(self, offer_id, request):
        self.calls.append(("create", offer_id, request))
        if "create after making it" in self.fail:  # the reply was lost, the instance exists
            self.made[self.new_id] = request["label"]
        self._maybe_fail("create")
        self._maybe_fail("create after making it")
        self.made[self.new_id] = request["label"]
        return self.new_id

    def instances_labelled(self, label):
        self._maybe_fail("list")
        self.calls.append(("list", label))
        return [i for i, lab in self.made.items() if lab == label]

    def _gone(self, instance_id, doing):
        if instance_id not in self.made:  # what vast.ai answers about an instance it no longer has
            raise job_failed(f"vast: {doing} instance {instance_id} failed: 404 Client Error: Not Found (fake)")

    def show_instance(self, instance_id):
        self._maybe_fail("show")
        self.calls.append(("show", instance_id))
        if instance_id not in self.made:
            return {}
        self.tick = min(self.tick + 1, len(self.timeline) - 1)
        return {"actual_status": self.timeline[self.tick][0], "status_msg": ""}

    def logs(self, instance_id):
        self._maybe_fail("logs")
        self.calls.append(("logs", instance_id))
        self._gone(instance_id, "reading the logs of")
        return "\n".join(self.timeline[self.tick][1])

    def copy_back(self, instance_id, remote_dir, local_dir, exclude=()):
        self.calls.append(("copy", instance_id, remote_dir, str(local_dir)))
        self._maybe_fail("copy")
        self._gone(instance_id, "copying from")
        assert "submission.json" in exclude  # this side's record is never replaced by the instance's
        self.copied_at.append(self.tick)
        files = self.disk()
        if files is None:
            raise job_failed(f"vast: rsync with instance {instance_id} failed (exit 23): change_dir "
                             f"{remote_dir} failed: No such file or directory (fake)")
        for name, text in files.items():
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / name).write_text(text)

    def destroy_instance(self, instance_id):
        self.calls.append(("destroy", instance_id))
        self._maybe_fail("destroy")
        self._gone(instance_id, "destroying")
        self.made.pop(instance_id, None)

    def stop_instance(self, instance_id):
        self.calls.append(("stop", instance_id))
        self._maybe_fail("stop")
        self._gone(instance_id, "stopping")

    def sleep(self, seconds):
        self.now += seconds
        if self.interrupt_at is not None and self.tick >= self.interrupt_at:
            raise KeyboardInterrupt

    def clock(self):
        return self.now


@pytest.fixture
def vast_spec(write_spec):
    def make(gpu="A10G:2", **vast):
        return write_spec(resources={"gpu": gpu, "timeout_minutes": 5}, backend="vast",
                          vast={"image": IMAGE, **vast})
    return make


def backend_with(fake):
    return VastBackend(connect=lambda: fake, sleep=fake.sleep, clock=fake.clock, poll_s=10)


def run_with(fake, spec_path, tmp_path):
    """What `gpujob submit` does: plan, make the run folder (its record first), submit attached."""
    from runner.runs.state import Run
    from runner.runs.folder import RunFolder
    from runner.runs.record import new_submission

    backend = backend_with(fake)
    spec = load_spec(spec_path)
    plan = backend.plan(spec, spec_path, tmp_path / "runs", RunFolder.free_name(tmp_path / "runs", spec.name))
    folder = RunFolder.start(plan.folder, new_submission("vast", plan.run_name, spec, spec_path))
    backend.submit(plan, Run(folder.path, new_submission("vast", plan.run_name)), detach=False)
    return folder.path


def started(*lines, code=None):
    body = [f"{START_MARK}run", *lines]
    return body + ([f"{EXIT_MARK}{code}"] if code is not None else [])


DONE = [("loading", []), ("running", started("step 1/2")), ("running", started("step 1/2", "step 2/2", code=0))]


# ---- the offer query, the choice, the request ----------------------------------------


def test_offer_query_is_built_from_the_spec_and_parses_as_vast_syntax(vast_spec):
    from vastai.api.query import offers_alias, offers_fields, offers_mult, parse_query

    spec = load_spec(vast_spec(max_dollars_per_hour=1.5, min_reliability=0.99, disk_gb=50,
                               extra_filters="geolocation=US"))
    query = offer_query(spec)
    assert query == ("gpu_name=A10 num_gpus=2 gpu_ram>=21.6 reliability>=0.99 disk_space>=50 cuda_max_good>=13.0 "
                     "duration>=0.0243 rentable=true verified=true dph_total<=1.5 geolocation=US")
    parsed = parse_query(query, {}, offers_fields, offers_alias, offers_mult)  # the SDK's own parser
    assert parsed["gpu_name"] == {"eq": "A10"} and parsed["dph_total"] == {"lte": "1.5"}
    assert parsed["gpu_ram"] == {"gte": 21600.0} and parsed["duration"] == {"gte": 0.0243 * 86400}
    spec = load_spec(vast_spec(gpu="H100:8", interruptible=True, max_dollars_per_hour=9))
    query = offer_query(spec)
    assert "gpu_name in [H100_SXM,H100_PCIE,H100_NVL] num_gpus=8 gpu_ram>=72.0" in query and "min_bid<=9.0" in query
    parsed = parse_query(query, {}, offers_fields, offers_alias, offers_mult)
    assert parsed["gpu_name"] == {"in": ["H100 SXM", "H100 PCIE", "H100 NVL"]}


def test_the_gpu_name_comes_from_the_catalog_and_a_missing_gpu_is_bad_input(vast_spec, write_spec):
    assert offer_query(load_spec(vast_spec(gpu="RTX4090:1"))).startswith("gpu_name=RTX_4090 num_gpus=1 ")
    with pytest.raises(GpujobError) as err:  # CUDA 13's torch has no kernels for sm_70: refused before renting
        offer_query(load_spec(vast_spec(gpu="V100:1")))
    assert err.value.exit_code == 2 and "V100 (compute capability 7.0) is too old" in err.value.message
    with pytest.raises(GpujobError) as err:
        offer_query(load_spec(write_spec(backend="vast", vast={"image": IMAGE})))
    assert err.value.exit_code == 2 and "resources.gpu" in err.value.message


def test_the_cheapest_offer_that_fits_is_chosen(vast_spec):
    spec = load_spec(vast_spec(max_dollars_per_hour=1.0, min_reliability=0.98, disk_gb=40))
    unfit = [offer(1, gpu="A100 PCIE", dph=0.1), offer(2, n=1, dph=0.1), offer(3, reliability=0.9, dph=0.1),
             offer(4, disk=20, dph=0.1), offer(5, cuda=12.4, dph=0.1), offer(6, dph=1.2), offer(7, dph=0.1, rentable=False)]
    assert choose_offer(unfit, spec) is None
    assert choose_offer(unfit + GOOD, spec)["id"] == 13  # 0.80 like #12, and more reliable


def test_interruptible_chooses_by_lowest_bid_and_bids_a_little_above_it(vast_spec):
    spec = load_spec(vast_spec(interruptible=True, max_dollars_per_hour=0.6))
    offers = [offer(1, dph=0.5, min_bid=0.55), offer(2, dph=2.0, min_bid=0.3), offer(3, min_bid=0.7)]
    chosen = choose_offer(offers, spec)
    assert chosen["id"] == 2 and bid_price(chosen, spec) == 0.33
    assert bid_price(offer(4, min_bid=0.58), spec) == 0.6  # never above the cap
    assert bid_price(chosen, load_spec(vast_spec())) is None  # on-demand: no bid


def test_the_instance_request_carries_the_job_and_the_sdk_accepts_it(vast_spec):
    from vastai.api.instances import build_create_instance_payload

    spec = load_spec(vast_spec(disk_gb=60))
    request = instance_request(spec, "test-job-20260101-000000", GOOD[0])
    assert request["image"] == IMAGE and request["disk"] == 60 and request["bid_price"] is None
    assert base64.b64decode(request["env"]["GPUJOB_SPEC_B64"]).decode() == spec.to_yaml()
    assert request["env"]["GPUJOB_RUN_NAME"] == "test-job-20260101-000000"
    payload = build_create_instance_payload(**request)  # what the SDK would PUT to /asks/ID/
    assert payload["runtype"] == "args" and payload["onstart"] == "gpujob-vast-start"
    assert payload["cancel_unavail"] is True and payload["price"] is None and payload["label"].startswith("gpujob ")
    interruptible = instance_request(load_spec(vast_spec(interruptible=True)), "x", GOOD[0])
    assert build_create_instance_payload(**interruptible)["price"] == 0.55


def test_the_on_start_script_runs_the_backends_worker_command():
    script = (REPO / "images" / "vast-start.sh").read_text()
    assert 'exec gpujob run "$2" --run-dir "$RUNS/$1" --nproc-per-node auto --resume' in script  # run_job NAME SPEC
    assert 'run_job "$GPUJOB_RUN_NAME" "$JOB/spec.yaml"' in script
    assert 'echo "gpujob-vast: exit $code"' in script and "/workspace/runs" in script
    assert "gpujob-vast-start" in (REPO / "Dockerfile").read_text()


# ---- the whole flow, and clean-up on every way out --------------------------------------


def test_a_run_follows_the_job_copies_the_folder_back_and_destroys_the_instance(vast_spec, tmp_path, capsys):
    fake = FakeVast(timeline=DONE)
    folder = run_with(fake, vast_spec(), tmp_path)
    assert fake.names()[:2] == ["search", "check copy"] and fake.calls[2][:2] == ("create", 13)
    copy = next(c for c in fake.calls if c[0] == "copy")
    assert copy[2] == f"/workspace/runs/{folder.name}" and copy[3] == str(folder)
    assert fake.names()[-1] == "destroy" and fake.names().count("destroy") == 1
    assert fake.copied_at == [len(DONE) - 1]  # once, after the exit line: what the finished job left
    assert (folder / "summary.json").read_text() == fake.run_files["summary.json"]
    assert "step 2/2" in (folder / "vast.log").read_text()
    out = capsys.readouterr()
    assert out.out.count("step 1/2") == 1  # each log line shown once, though every poll returns it again
    assert "destroyed instance 42" in out.err
    cost = json.loads((folder / "cost.json").read_text())  # offer 13 at $0.80/h, rented for two 10 s polls
    assert (cost["price_per_hour_usd"], cost["billed_s"], cost["estimated_usd"]) == (0.8, 20.0, 0.0044)
    assert "cost: about $0.00" in out.err


def test_create_failing_after_the_instance_was_made_still_destroys_it(vast_spec, tmp_path):
    fake = FakeVast(timeline=DONE, fail={"create after making it"})
    with pytest.raises(GpujobError):
        run_with(fake, vast_spec(), tmp_path)
    assert ("destroy", 42) in fake.calls and not fake.made


def test_a_failed_job_brings_its_error_back_and_destroys(vast_spec, tmp_path):
    lines = started("gpujob: job failed: RuntimeError: CUDA out of memory", code=1)
    fake = FakeVast(timeline=[("running", lines)], run_files={"error.log": "Traceback ..."})
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    assert err.value.exit_code == 1 and "CUDA out of memory" in err.value.message
    assert fake.names()[-2:] == ["copy", "destroy"]
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "error.log").read_text() == "Traceback ..."
    cost = json.loads((run / "cost.json").read_text())  # a failed job's rental is kept too: one poll, no wait
    assert (cost["price_per_hour_usd"], cost["billed_s"]) == (0.8, 0.0)


def test_a_bad_spec_found_in_the_container_is_exit_2(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("running", started("gpujob: data.root: mnist not found under /data", code=2))])
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    assert err.value.exit_code == 2 and "mnist not found" in err.value.message and ("destroy", 42) in fake.calls


def test_ctrl_c_copies_what_is_there_and_destroys(vast_spec, fake_vast, tmp_path):
    fake = fake_vast(FakeVast(timeline=[("loading", []), ("running", started("step 1/9"))], interrupt_at=1))
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 130 and "instance 42 was destroyed" in result.stderr
    assert fake.names()[-2:] == ["copy", "destroy"]
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run)
    assert (run / "checkpoints" / "step-00000001.pt").exists() and not (run / "summary.json").exists()
    assert json.loads((run / "cost.json").read_text())["billed_s"] == 30.0  # to the Ctrl-C, in the second 15 s wait
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")


def test_an_instance_that_never_starts_is_destroyed_without_copying(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("loading", [])])
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(startup_minutes=2), tmp_path)
    assert err.value.exit_code == 1 and "did not start within vast.startup_minutes (2 min)" in err.value.message
    assert "copy" not in fake.names() and fake.names()[-1] == "destroy"
    (run,) = (tmp_path / "runs").iterdir()  # what the rental cost is kept, though nothing ran
    assert json.loads((run / "cost.json").read_text())["billed_s"] == 130.0
    assert json.loads((run / "submission.json").read_text())["handles"]["destroyed"] is True


def test_a_job_past_its_timeout_is_stopped_and_destroyed(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("running", started("step 1/9"))])  # running from the first poll, at 0 s
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)  # timeout_minutes 5, a poll every 10 s
    assert err.value.exit_code == 1 and "timeout_minutes (5 min)" in err.value.message
    assert RUN_GRACE_S == 10 * 60  # the README's "timeout_minutes + 10 min"
    limit = 5 * 60 + RUN_GRACE_S
    assert limit < fake.now <= limit + 10  # stopped at the first poll past the limit, not before
    assert fake.names()[-2:] == ["copy", "destroy"] and "stop" not in fake.names()
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "checkpoints" / "step-00000001.pt").exists()  # what it had written comes back first
    assert json.loads((run / "cost.json").read_text())["billed_s"] == fake.now


def test_copy_back_failing_still_destroys(vast_spec, tmp_path):
    fake = FakeVast(timeline=DONE, fail={"copy"})
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    assert "copy failed" in err.value.message and fake.names()[-1] == "destroy"


def test_a_destroy_that_keeps_failing_is_loud(vast_spec, tmp_path, capsys):
    fake = FakeVast(timeline=DONE, flaky={"destroy": 10_000})  # vast.ai never answers the destroy
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    tries = fake.names().count("destroy")
    assert tries > 3 and 200 <= fake.now <= 300  # minutes of patience: the destroy is what stops the billing
    assert "vastai destroy instance 42" in err.value.message and "still billed" in err.value.message
    refused = FakeVast(timeline=DONE, fail={"destroy"})  # a definite answer is not asked again
    with pytest.raises(GpujobError):
        run_with(refused, vast_spec(), tmp_path)
    assert refused.names().count("destroy") == 1


def test_a_container_that_dies_without_finishing_is_a_failure_after_90_s(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("running", started("step 1/9")), ("exited", started("step 1/9", "Killed"))])
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    assert "exited and the job did not finish: Killed" in err.value.message and fake.names()[-1] == "destroy"
    assert EXITED_GRACE_S == 90
    exited_at = 10  # the second poll
    assert exited_at + EXITED_GRACE_S < fake.now <= exited_at + EXITED_GRACE_S + 10  # the grace, then one poll
    assert fake.names()[-2:] == ["copy", "destroy"]


def test_an_exited_container_whose_exit_line_shows_late_is_followed_to_it(vast_spec, tmp_path):
    """The 90 s are for an exited container's last log lines to show: a job that finished is not failed."""
    late = [("exited", started("step 9/9"))] * 8  # 80 s without the exit line
    fake = FakeVast(timeline=[("running", started("step 1/9")), *late, ("exited", started("step 9/9", code=0))])
    folder = run_with(fake, vast_spec(), tmp_path)
    assert (folder / "summary.json").exists() and fake.copied_at == [len(fake.timeline) - 1]


def test_an_outbid_interruptible_instance_resumes_and_finishes(vast_spec, tmp_path):
    first = started("step 3/9", "gpujob: stopped at step 3 by SIGTERM", code=143)
    timeline = [("running", first), ("stopped", first), ("running", first + started("step 4/9")),
                ("running", first + started("step 4/9", "step 9/9", code=0))]
    fake = FakeVast(timeline=timeline)
    folder = run_with(fake, vast_spec(interruptible=True), tmp_path)
    # Copied once, after the resumed attempt's exit 0: a copy at the pause would bring back no summary.json.
    assert fake.copied_at == [len(timeline) - 1] and (folder / "summary.json").exists()
    assert fake.names().count("show") == len(timeline) and fake.names()[-1] == "destroy"
    assert fake.names().count("destroy") == 1 and "stop" not in fake.names()
    log = (folder / "vast.log").read_text()
    assert "exit 143" in log and "step 9/9" in log and log.rstrip().endswith("gpujob-vast: exit 0")


def test_an_on_demand_instance_stopped_by_sigterm_is_reported_as_preempted(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("running", started("step 3/9", code=143))])
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    assert err.value.exit_code == 143 and "gpujob resume" in err.value.message


# ---- the command line ------------------------------------------------------------------


@pytest.fixture
def fake_vast(use_backend):
    def install(fake):
        use_backend("vast", connect=lambda: fake, sleep=fake.sleep, clock=fake.clock)
        return fake
    return install


def test_dry_run_shows_the_offer_and_the_price_and_rents_nothing(vast_spec, fake_vast):
    fake = fake_vast(FakeVast())
    result = cli("submit", vast_spec(), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "#13: 2x A10 in Oregon, US" in result.stdout and "$0.800/hour on-demand" in result.stdout
    assert "dry run: nothing was submitted" in result.stdout and fake.names() == ["search"]


def test_submit_runs_the_whole_flow(vast_spec, fake_vast, tmp_path):
    fake = fake_vast(FakeVast(timeline=DONE))
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run)  # the last line is the run folder
    assert fake.names()[:3] == ["search", "check copy", "create"]
    assert fake.names()[-2:] == ["copy", "destroy"] and fake.copied_at == [len(DONE) - 1]
    assert (run / "summary.json").read_text() == fake.run_files["summary.json"]
    assert "done: test_accuracy" in result.stdout
    assert json.loads((run / "submission.json").read_text())["handles"]["destroyed"] is True


def test_a_failed_submit_ends_with_the_run_folder_and_what_it_cost(vast_spec, fake_vast, tmp_path):
    lines = started("gpujob: job failed: RuntimeError: CUDA out of memory", code=1)
    fake_vast(FakeVast(timeline=[("running", started("step 1/9")), ("running", lines)],
                       run_files={"error.log": "Traceback ..."}))
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "CUDA out of memory" in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run)
    assert (run / "error.log").exists() and json.loads((run / "cost.json").read_text())["billed_s"] == 15.0  # a poll
    assert cli("status", run).stdout.startswith(f"{run.name}: failed")


def test_no_offer_that_fits_says_what_to_change(vast_spec, fake_vast):
    fake_vast(FakeVast(offers=[offer(1, dph=5.0)]))
    result = cli("submit", vast_spec(max_dollars_per_hour=1))
    assert result.exit_code == 1 and "max_dollars_per_hour" in result.stderr


def test_vast_image_is_required(write_spec, fake_vast):
    fake_vast(FakeVast())
    result = cli("submit", write_spec(resources={"gpu": "A10G:1"}, backend="vast"), "--dry-run")
    assert result.exit_code == 2 and "vast.image" in result.stderr


def test_no_ssh_key_stops_before_renting(vast_spec, fake_vast):
    fake = fake_vast(FakeVast(fail={"no ssh key"}))
    result = cli("submit", vast_spec())
    assert result.exit_code == 3 and "vastai create ssh-key" in result.stderr and "create" not in fake.names()


def test_without_an_api_key_exit_3_and_one_line(vast_spec, tmp_path):
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"), "VAST_API_KEY": ""}
    out = subprocess.run([sys.executable, "-m", "runner.cli", "submit", str(vast_spec()), "--dry-run"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**{k: v for k, v in __import__("os").environ.items() if k != "VAST_API_KEY"}, **env})
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip() == f"gpujob: {NO_API_KEY}"


def test_the_api_key_is_found_where_the_vastai_cli_keeps_it(tmp_path, monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert find_api_key() is None
    (tmp_path / ".vast_api_key").write_text("legacy\n")
    assert find_api_key() == "legacy"
    (tmp_path / "xdg" / "vastai").mkdir(parents=True)
    (tmp_path / "xdg" / "vastai" / "vast_api_key").write_text("xdg\n")
    assert find_api_key() == "xdg"
    monkeypatch.setenv("VAST_API_KEY", "env")
    assert find_api_key() == "env"


# ---- following the log -------------------------------------------------------------------


def test_new_lines_finds_where_a_later_log_window_continues():
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["x"], ["y", "z"]) == ["y", "z"]  # no overlap: the window moved past everything seen


def test_exit_code_reads_the_last_attempt():
    assert exit_code(started("step")) is None
    assert exit_code(started(code=0)) == 0
    assert exit_code(started(code=143) + started("step")) is None
    assert exit_code(started(code=143) + started(code=1)) == 1


# ---- VastApi over the SDK's replies ---------------------------------------------------------


class StubSdk:
    """The few `vastai.VastAI` methods VastApi calls, answering as the SDK does."""

    def __init__(self, **replies):
        self.replies, self.asked = replies, []

    def __getattr__(self, name):
        reply = self.replies[name]

        def call(*args, **kwargs):
            self.asked.append(name)
            return reply(*args, **kwargs) if callable(reply) else reply

        return call


def test_vast_api_reads_the_sdks_replies(tmp_path):
    from runner.backends.vast.api import VastApi

    api = VastApi(StubSdk(create_instance={"success": True, "new_contract": 7835610},
                          logs={"success": False, "msg": "not ready"}, show_instance=None,
                          show_instances=[{"id": 1, "label": "gpujob a"}, {"id": 2, "label": "other"}]))
    assert api.create_instance(5, {"image": IMAGE}) == 7835610
    assert api.logs(1) == "" and api.show_instance(1) == {} and api.instances_labelled("gpujob a") == [1]
    refused = VastApi(StubSdk(create_instance={"success": False, "msg": "no_such_ask"}))
    with pytest.raises(GpujobError) as err:
        refused.create_instance(5, {})
    assert err.value.exit_code == 1 and "no_such_ask" in err.value.message


def test_vast_api_turns_http_errors_into_one_line(monkeypatch):
    import requests

    from runner.backends.vast.api import VastApi

    def refuse(*args, **kwargs):
        response = requests.Response()
        response.status_code = 401
        raise requests.HTTPError("401 Client Error: Unauthorized", response=response)

    with pytest.raises(GpujobError) as err:
        VastApi(StubSdk(search_offers=refuse)).search_offers("num_gpus=1", "on-demand", 40, "dph_total")
    assert err.value.exit_code == 3 and "vastai set api-key" in err.value.message


def test_copying_back_needs_rsync_ssh_and_an_account_ssh_key(tmp_path, monkeypatch):
    from runner.backends.vast.api import VastApi

    monkeypatch.setattr("runner.backends.vast.api.shutil.which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(GpujobError) as err:
        VastApi(StubSdk(show_ssh_keys=[])).check_can_copy()
    assert err.value.exit_code == 3 and "vastai create ssh-key" in err.value.message
    VastApi(StubSdk(show_ssh_keys=[{"id": 1, "public_key": "ssh-ed25519 AAAA"}])).check_can_copy()
    monkeypatch.setattr("runner.backends.vast.api.shutil.which", lambda tool: None if tool == "rsync" else f"/usr/bin/{tool}")
    with pytest.raises(GpujobError) as err:
        VastApi(StubSdk(show_ssh_keys=[{"id": 1}])).check_can_copy()
    assert "needs rsync" in err.value.message


# ---- the lifecycle, with the image's start script as the instance ------------------------


@pytest.fixture
def local_vast(tmp_path, use_backend):
    from tests.vast_standin import LocalVast

    fake = LocalVast(tmp_path / "vast", GOOD)
    use_backend("vast", connect=lambda: fake, poll_s=0.2)
    yield fake
    for instance_id, inst in fake.instances.items():
        if not inst["destroyed"]:
            fake.destroy_instance(instance_id)


def _digits_vast(vast_spec_path):
    text = vast_spec_path.read_text() + ("model: {name: cnn}\ndata: {dataset: digits, batch_size: 32}\n"
                                         "train: {epochs: 3, log_every_steps: 5, checkpoint_every_minutes: 10}\n")
    vast_spec_path.write_text(text)
    return vast_spec_path


def test_detach_status_logs_cancel_then_resume_on_a_new_instance(vast_spec, local_vast, tmp_path):
    from tests.conftest import wait_for

    runs = tmp_path / "runs"
    spec = _digits_vast(vast_spec(gpu="A10G:2"))
    submitted = cli("submit", spec, "--detach", "--runs-dir", runs)
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    assert "bills until the job ends" in submitted.stdout and f"gpujob cancel {run}" in submitted.stdout
    handles = json.loads((run / "submission.json").read_text())["handles"]
    assert handles["vast_instance_id"] == 101 and handles["vast_label"] == f"gpujob {run.name}"
    assert "destroy" not in local_vast.names()  # detached: the instance keeps running

    wait_for(lambda: "step 10/" in local_vast.logs(101), "the job's steps on the instance")
    assert cli("status", run).stdout.startswith(f"{run.name}: running: on instance 101")
    assert "step 5/" in cli("logs", run).stdout

    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and "instance 101 destroyed" in cancelled.stdout, cancelled.stderr
    names = local_vast.names()
    assert names.index("stop") < names.index("copy") < names.index("destroy")  # checkpoint, bring back, destroy
    assert "gpujob-vast: exit 143" in (run / "vast.log").read_text()  # it checkpointed on SIGTERM, then exited
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "summary.json").exists()
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")
    assert json.loads((run / "cost.json").read_text())["billed_s"] > 0

    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert ("upload", 102, f"/workspace/runs/{run.name}") in local_vast.calls  # the checkpoint went with it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["epochs"] == 3
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # every step logged once
    assert local_vast.instances[102]["destroyed"] and cli("status", run).stdout.startswith(f"{run.name}: finished")
    assert json.loads((run / "submission.json").read_text())["backend"] == "vast"
    listed = json.loads(cli("runs", "--runs-dir", runs, "--json").stdout)
    assert [(r["run"], r["backend"], r["state"]) for r in listed] == [(run.name, "vast", "finished")]


def test_an_attached_run_of_the_start_script_comes_back_whole(vast_spec, local_vast, tmp_path):
    spec = _digits_vast(vast_spec(gpu="A10G:2"))
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    assert all((run / name).is_file() for name in ("summary.json", "metrics.jsonl", "model.pt", "vast.log", "cost.json"))
    record = json.loads((run / "submission.json").read_text())
    assert record["backend"] == "vast" and record["handles"]["destroyed"] is True  # this side's record kept
    # The instance's start as this side saw it, between the submission and the job's own start.
    (seen,) = [e for e in record["events"] if e.get("phase")]
    assert seen["event"] == "instance running" and seen["t"] <= json.loads((run / "timing.json").read_text())["started_at"]
    assert "rented, image pulled, container started " in cli("show", run).stdout


def test_the_users_own_code_is_sent_to_the_instance_before_the_job_starts(local_vast, tmp_path):
    """The regression example: the instance has only its image, so the job waits for the run's
    copy of the code (job/code), sent once the instance runs, and imports it from there."""
    from tests.test_user_code import example

    spec = example(tmp_path, "regression", train={"epochs": 2}, resources={"gpu": "A10G:2", "timeout_minutes": 5},
                   backend="vast", vast={"image": IMAGE})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    uploads = [c for c in local_vast.calls if c[0] == "upload"]
    assert uploads == [("upload", 101, "/workspace/job/code"), ("upload", 101, "/workspace/job/.gpujob-uploaded")]
    disk = local_vast.instances[101]["disk"]
    assert (disk / "workspace" / "job" / "code" / "gpujob_examples" / "regression.py").is_file()
    log = (run / "vast.log").read_text()
    assert log.index("waiting for the run folder or the job's code") < log.index("gpujob-vast: start")
    assert "vast: sent your code to instance 101" in result.stderr
    last = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert set(last["test_metrics"]) == {"mae"} and last["test_accuracy"] is None


class UploadingVast(FakeVast):
    """FakeVast that takes uploads (VastApi.copy_to), failing the mark's when told to."""

    def __init__(self, fail_mark=False, **life):
        super().__init__(**life)
        self.fail_mark = fail_mark

    def copy_to(self, instance_id, local_path, remote_path, exclude=()):
        from pathlib import Path

        self.calls.append(("upload", instance_id, remote_path))
        assert Path(local_path).exists()
        if self.fail_mark and remote_path.endswith(vast_copying.UPLOADED):
            raise job_failed(f"vast: rsync with instance {instance_id} failed (exit 23): fake")


@pytest.mark.parametrize("fail_mark", [False, True])
def test_an_upload_leaves_nothing_in_the_temp_folder(tmp_path, fake_vast, monkeypatch, fail_mark):
    """The mark sent last (vast-start.sh waits for it) is an empty file made here: it is removed
    once sent, or once the copy failed (issue 23: every upload left a /tmp/gpujob-uploaded-*)."""
    import tempfile

    from tests.test_user_code import example

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    fake = fake_vast(UploadingVast(fail_mark=fail_mark, timeline=DONE))
    spec = example(tmp_path, "regression", train={"epochs": 2}, resources={"gpu": "A10G:2", "timeout_minutes": 5},
                   backend="vast", vast={"image": IMAGE})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == (1 if fail_mark else 0), result.stderr
    assert ("upload", 42, "/workspace/job/.gpujob-uploaded") in fake.calls
    assert list(scratch.iterdir()) == []


# ---- what real services do: fast jobs, flaky APIs, pauses, the wrong card --------------------


def test_a_job_that_ends_between_two_polls_is_followed_to_its_exit_and_copied_back(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("loading", []), ("exited", started("step 2/2", code=0))])
    folder = run_with(fake, vast_spec(), tmp_path)
    assert ("copy", 42, f"/workspace/runs/{folder.name}", str(folder)) in fake.calls
    assert (folder / "summary.json").exists() and "gpujob-vast: exit 0" in (folder / "vast.log").read_text()
    assert fake.now < 60  # not startup_minutes (20 min) of waiting for a "running" it never showed


@pytest.mark.parametrize("call", ["check copy", "create", "show", "logs", "copy", "destroy", "list"])
def test_every_kind_of_call_may_fail_a_few_times_in_a_row(vast_spec, tmp_path, capsys, call):
    fake = FakeVast(timeline=DONE, flaky={call: 3})
    folder = run_with(fake, vast_spec(), tmp_path)
    assert (folder / "summary.json").exists()
    assert fake.names().count(f"{call} failed") == (3 if call != "list" else 0)  # list is only asked after a lost create
    assert fake.names().count("create") == 1 + (3 if call == "create" else 0) and len(fake.made) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "trying again" in line]
    assert len(warnings) == (3 if call != "list" else 0)


def test_a_dry_run_says_soon_when_vast_ai_cannot_be_reached(vast_spec, fake_vast):
    fake = fake_vast(FakeVast(flaky={"search": 10_000}))
    result = cli("submit", vast_spec(), "--dry-run")
    assert result.exit_code == 3 and "vast.ai has not answered" in result.stderr and "Traceback" not in result.stderr
    assert fake.now <= 15  # PLAN_OUTAGE_S


def test_a_create_whose_answer_was_lost_is_found_by_its_label_not_rented_twice(vast_spec, tmp_path):
    class LostReply(FakeVast):
        def create_instance(self, offer_id, request):
            self.calls.append(("create", offer_id, request))
            self.made[42] = request["label"]
            raise VastUnavailable("vast: renting: cannot reach vast.ai (ReadTimeout)")

    fake = LostReply(timeline=DONE)
    folder = run_with(fake, vast_spec(), tmp_path)
    assert fake.names().count("create") == 1 and ("list", f"gpujob {folder.name}") in fake.calls
    assert (folder / "summary.json").exists() and fake.names().count("destroy") == 1


def test_a_lasting_outage_ends_the_job_after_minutes_copying_back_first(vast_spec, tmp_path):
    fake = FakeVast(timeline=[("running", started("step 1/9"))] * 3, flaky={})
    original = fake.show_instance

    def down_after_two(instance_id):
        if fake.names().count("show") >= 2:
            fake.flaky["show"] = 10_000
        return original(instance_id)

    fake.show_instance = down_after_two
    with pytest.raises(GpujobError) as err:
        run_with(fake, vast_spec(), tmp_path)
    assert err.value.exit_code == 3 and "vast.ai has not answered for" in err.value.message
    assert 480 <= fake.now  # minutes of patience, not one failed poll
    names = fake.names()
    assert names.index("copy") < names.index("destroy")  # what the job wrote comes back first


def test_a_paused_interruptible_instance_is_waited_for_not_failed(vast_spec, tmp_path):
    first = started("step 3/9", "gpujob: stopped at step 3 by SIGTERM", code=143)
    paused = [("stopped", first)] * 20  # 200 s paused: past the 90 s grace an exited on-demand one gets
    timeline = [("running", started("step 3/9")), *paused, ("running", first + started("step 4/9")),
                ("running", first + started("step 4/9", "step 9/9", code=0))]
    fake = FakeVast(timeline=timeline)
    folder = run_with(fake, vast_spec(interruptible=True), tmp_path)
    assert (folder / "summary.json").exists() and fake.names().count("destroy") == 1
    silent = FakeVast(timeline=[("running", started("step 3/9"))] + [("exited", started("step 3/9"))] * 30 +
                      [("running", started("step 3/9", "step 9/9", code=0))])
    assert (run_with(silent, vast_spec(interruptible=True), tmp_path) / "summary.json").exists()  # no exit line at all


def test_the_memory_of_the_card_is_what_was_asked_for(vast_spec):
    spec = load_spec(vast_spec(gpu="A100-80GB:1"))
    forty = offer(1, gpu="A100 SXM4", n=1, dph=1.0, ram_mb=40960)
    eighty = offer(2, gpu="A100 PCIE", n=1, dph=1.6, ram_mb=81920)
    assert choose_offer([forty, eighty], spec)["id"] == 2  # not the cheaper 40 GB card of the same name
    assert choose_offer([forty], load_spec(vast_spec(gpu="A100-40GB:1")))["id"] == 1


def test_a_host_whose_contract_ends_before_the_job_is_not_taken(vast_spec):
    spec = load_spec(vast_spec(gpu="A10G:2"))
    assert choose_offer([offer(1, dph=0.1, days=0.01), offer(2, dph=0.9, days=2)], spec)["id"] == 2


def test_bids_are_searched_in_bid_order_and_their_cost_counts_the_disk(vast_spec, fake_vast, tmp_path):
    fake = fake_vast(FakeVast(timeline=DONE))
    result = cli("submit", vast_spec(interruptible=True, disk_gb=40), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    (search,) = [call for call in fake.calls if call[0] == "search"][:1]
    assert search[2] == "bid" and search[4] == "min_bid"
    cost = json.loads((result.run_dir / "cost.json").read_text())
    bid, disk = 0.55, 0.15 * 40 / 720  # offer 12/13 at min_bid 0.5 (x1.10), storage $0.15/GB/month
    assert cost["price_per_hour_usd"] == round(bid + disk, 4) and "storage" in cost["basis"]


def test_unreachable_vast_ai_is_exit_3_in_one_line(vast_spec, tmp_path):
    from vastai import VastAI

    from runner.backends.vast.api import VastApi

    clock = [0.0]
    backend = VastBackend(connect=lambda: VastApi(VastAI(api_key="not-a-real-key", server_url="http://127.0.0.1:9",
                                                         quiet=True)),
                          sleep=lambda s: clock.__setitem__(0, clock[0] + s), clock=lambda: clock[0])
    spec = load_spec(vast_spec())
    with pytest.raises(GpujobError) as err:
        backend.plan(spec, vast_spec(), tmp_path / "runs", "run-1")
    assert err.value.exit_code == 3 and "\n" not in err.value.message
    assert "cannot reach vast.ai" in err.value.message and "not-a-real-key" not in err.value.message


# ---- copying back over a network that fails, with VastApi's own rsync call ------------------------


class RsyncVast(FakeVast):
    """FakeVast whose copy-back is VastApi's own (`vastai copy`'s reply, then rsync over ssh), run
    against tests/vast_standin.py's rsync, which copies from the instance's disk (a folder here)."""

    def __init__(self, rsync, **life):
        super().__init__(**life)
        self.rsync = rsync

    def copy_back(self, instance_id, remote_dir, local_dir, exclude=()):
        from runner.backends.vast.api import VastApi

        self.calls.append(("copy", instance_id, remote_dir, str(local_dir)))
        self._gone(instance_id, "copying from")
        self.copied_at.append(self.tick)
        on_disk = self.rsync.disk / remote_dir.lstrip("/")
        for name, text in (self.disk() or {}).items():
            (on_disk / name).parent.mkdir(parents=True, exist_ok=True)
            (on_disk / name).write_text(text)
        sdk = StubSdk(copy={"success": True, "src_addr": "10.0.0.1", "src_port": 40022})
        VastApi(sdk).copy_back(instance_id, remote_dir, local_dir, exclude)


@pytest.fixture
def rsync(tmp_path, monkeypatch):
    from tests.vast_standin import FakeRsync

    return FakeRsync(tmp_path / "rsync").install(monkeypatch)


@pytest.mark.parametrize("trouble, says", [("drop", "lost its connection (exit 12): rsync error: error in rsync "
                                                     "protocol data stream"),
                                           ("timeout", "lost its connection (exit 30): rsync error: timeout in data "
                                                       "send/receive"),
                                           ("refused", "lost its connection (exit 255)")])
def test_a_copy_that_loses_its_connection_or_times_out_is_tried_again(vast_spec, fake_vast, rsync, tmp_path, trouble,
                                                                      says):
    fake = fake_vast(RsyncVast(rsync, timeline=DONE))
    rsync.plan(trouble, trouble)  # the first two copies fail; the third gets through
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert rsync.runs() == [trouble, trouble, "ok"]
    warnings = [line for line in result.stderr.splitlines() if says in line]
    assert [w.rsplit("; ", 1)[1] for w in warnings] == ["trying again in 2 s", "trying again in 4 s"], result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run)
    assert (run / "summary.json").read_text() == fake.run_files["summary.json"]  # all of it, after the drop
    assert fake.names()[-4:] == ["copy", "copy", "copy", "destroy"]


def test_a_copy_that_never_gets_through_ends_the_job_after_minutes_and_destroys(vast_spec, fake_vast, rsync, tmp_path):
    fake = fake_vast(RsyncVast(rsync, timeline=DONE))
    rsync.plan(*["refused"] * 100)
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 3 and "lost its connection (exit 255)" in result.stderr
    assert "vast.ai has not answered for" in result.stderr and 8 * 60 < fake.now < 12 * 60  # minutes of patience
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run) and fake.names()[-1] == "destroy"
    assert json.loads((run / "cost.json").read_text())["billed_s"] == fake.now


def test_a_copy_that_hangs_is_stopped_and_the_instance_destroyed(vast_spec, fake_vast, rsync, tmp_path, monkeypatch):
    monkeypatch.setattr("runner.backends.vast.api.RSYNC_TIMEOUT_S", 1)  # an hour, on this machine
    fake = fake_vast(RsyncVast(rsync, timeline=DONE))
    rsync.plan("hang")
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "rsync with instance 42 took more than" in result.stderr
    assert "and was stopped" in result.stderr and "Traceback" not in result.stderr
    assert rsync.runs() == ["hang"]  # not asked again: an hour-long copy is not a passing outage
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.splitlines()[-1] == str(run) and fake.names()[-2:] == ["copy", "destroy"]
    assert (run / "cost.json").exists() and cli("status", run).stdout.startswith(f"{run.name}: failed")


# ---- what stops a job before anything is rented ---------------------------------------------------


@pytest.mark.parametrize("sections, says", [
    ({"resources": {"gpu": "A10G:1"}, "vast": {}}, "vast.image: backend vast needs your image"),
    ({"resources": {"timeout_minutes": 5}}, "resources.gpu: backend vast rents GPUs"),
    ({"resources": {"gpu": "V100:1"}}, "V100 (compute capability 7.0) is too old"),
    ({"resources": {"gpu": "A10G:1", "nodes": 2}}, "resources.nodes: backend vast rents one instance"),
    ({"resources": {"gpu": "TPU-v5:1"}}, "unknown GPU type 'TPU-v5'"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_what_vast_cannot_run_is_exit_2_before_anything_is_rented(write_spec, fake_vast, tmp_path, sections, says,
                                                                   dry_run):
    fake = fake_vast(FakeVast(timeline=DONE))
    spec = write_spec(**{"backend": "vast", "vast": {"image": IMAGE}, **sections})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs", *(["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not {"create", "check copy"} & set(fake.names()) and not (tmp_path / "runs").exists()


def test_a_gpu_type_vast_does_not_sell_is_exit_2(vast_spec, fake_vast, monkeypatch, tmp_path):
    from runner.gpus import parse_gpu

    monkeypatch.delitem(parse_gpu("L4:1").type.provider_names, "vast")  # a card sold on Modal only
    fake = fake_vast(FakeVast())
    result = cli("submit", vast_spec(gpu="L4:1"), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "resources.gpu: vast does not offer L4; it offers: T4, A10G" in result.stderr
    assert fake.names() == [] and not (tmp_path / "runs").exists()


def _unauthorized(*args, **kwargs):
    import requests

    response = requests.Response()
    response.status_code = 401
    raise requests.HTTPError("401 Client Error: Unauthorized", response=response)


SDK_ANSWERS = {"search_offers": GOOD, "show_ssh_keys": [{"id": 1, "public_key": "ssh-ed25519 AAAA"}]}


@pytest.mark.parametrize("case, says", [
    ("no key", NO_API_KEY),
    ("key refused", "vast: the API key was refused (401) while searching offers; set a valid one with `vastai set "
                    "api-key KEY`"),
    ("no vastai", "vast: the vastai package is not installed; install it with: uv sync --extra vast"),
    ("no ssh key", "vast: your vast.ai account has no ssh key"),
    ("no rsync", "vast: copying the run folder back needs rsync here"),
    ("no ssh", "vast: copying the run folder back needs ssh here"),
])
def test_what_this_machine_or_the_account_lacks_is_exit_3_before_anything_is_rented(vast_spec, monkeypatch, tmp_path, use_backend,
                                                                                    rsync, case, says):
    from runner.backends.vast.api import VastApi

    answers = dict(SDK_ANSWERS, create_instance={"success": True, "new_contract": 42})
    if case == "key refused":
        answers["search_offers"] = _unauthorized
    if case == "no ssh key":
        answers["show_ssh_keys"] = []
    sdk = StubSdk(**answers)
    use_backend("vast", connect=lambda: VastApi(sdk))
    if case in ("no key", "no vastai"):  # the real lookup: the environment, then the vastai CLI's files
        use_backend("vast")
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        monkeypatch.delenv("VAST_API_KEY", raising=False)
    if case == "no vastai":
        monkeypatch.setenv("VAST_API_KEY", "a-key-never-shown")
        monkeypatch.setitem(sys.modules, "vastai", None)
    if case in ("no rsync", "no ssh"):
        (rsync.bin / case.split()[1]).unlink()
        monkeypatch.setenv("PATH", str(rsync.bin))  # only the stand-ins: the one removed is nowhere
    result = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    *_, error = result.stderr.strip().splitlines()  # one line, the last: what to do
    assert error.startswith(f"gpujob: {says}") and "Traceback" not in result.stderr
    assert "create_instance" not in sdk.asked and not (tmp_path / "runs").exists()
    assert "a-key-never-shown" not in result.stdout + result.stderr


# ---- an instance destroyed outside gpujob -------------------------------------------------------


def test_an_instance_destroyed_outside_gpujob_is_said_to_be_gone_never_billed(vast_spec, fake_vast, tmp_path):
    fake = fake_vast(FakeVast(timeline=[("loading", []), ("running", started("step 1/9"))]))
    run = cli("submit", vast_spec(), "--detach", "--runs-dir", tmp_path / "runs").run_dir
    assert cli("status", run).stdout.startswith(f"{run.name}: pending: instance 42 is loading")
    assert cli("status", run).stdout.startswith(f"{run.name}: running: on instance 42")
    fake.made.clear()  # destroyed from vast.ai's console (or by vast.ai)
    status = cli("status", run)
    assert status.exit_code == 0, status.stderr
    assert status.stdout.startswith(f"{run.name}: preempted: instance 42 is gone (destroyed outside gpujob)")
    assert "gpujob resume" in status.stdout
    for command in ("fetch", "cancel"):
        said = cli(command, run)
        assert said.exit_code == 0, (command, said.stderr)
        assert "instance 42 is gone (destroyed outside gpujob)" in said.stdout + said.stderr, (command, said.stderr)
        assert "still billed" not in said.stdout + said.stderr
    assert not {"stop", "copy", "destroy"} & set(fake.names())  # nothing asked of an instance that is not there
    assert json.loads((run / "submission.json").read_text())["handles"]["destroyed"] is True
    assert cli("cancel", run).stdout.startswith(f"{run.name} is not running")  # safe to repeat
