"""vast.ai on the base's chores (issue 24): submit keeps exactly what it sent in job/request.json,
and resume sends that recorded request again with only what must be new (an offer, its bid, the
instance told to wait for the run folder), never a request planned again."""

from __future__ import annotations

import json

import pytest

from runner.backends.vast.request import WAIT_FOR_UPLOAD, VastRequest
from tests.conftest import cli
from tests.test_vast import (DONE, FakeVast, UploadingVast, backend_with, fake_vast, offer, run_with,  # noqa: F401
                             started, vast_spec)

STOPPED = [("running", started("step 3/9", "gpujob: stopped at step 3 by SIGTERM", code=143))]


def _sent(run) -> dict:
    return json.loads((run / "job" / "request.json").read_text())


def _created(fake) -> list[tuple[int, dict]]:
    """Each rent's offer and payload, less the meter's variables: new for each rent (billed from
    it on, runner/backends/billing.py), so never part of the request job/request.json keeps."""
    from runner.training.meter import BILLED_SINCE, MAX_USD, PRICE

    rents = [(call[1], call[2]) for call in fake.calls if call[0] == "create"]
    for _, payload in rents:
        assert PRICE in payload["env"] and BILLED_SINCE in payload["env"]  # every priced rent is metered
    return [(offer_id, {**payload, "env": {k: v for k, v in payload["env"].items()
                                           if k not in (PRICE, BILLED_SINCE, MAX_USD)}})
            for offer_id, payload in rents]


def test_submit_keeps_exactly_what_it_sent_in_job_request_json(vast_spec, tmp_path):
    fake = FakeVast(timeline=DONE)
    folder = run_with(fake, vast_spec(), tmp_path)
    ((offer_id, payload),) = _created(fake)
    sent = _sent(folder)
    assert sent["offer"]["id"] == offer_id == 13 and sent["payload"] == payload and sent["sends_run_folder"] is False
    assert VastRequest.from_json(sent) == VastRequest(sent["offer"], payload)  # read back as it was written
    assert (folder / "job" / "spec.yaml").is_file()


def test_resume_sends_the_recorded_request_on_a_new_offer_waiting_for_the_run_folder(vast_spec, fake_vast, tmp_path):
    fake = fake_vast(UploadingVast(timeline=STOPPED))
    first = cli("submit", vast_spec(interruptible=True), "--runs-dir", tmp_path / "runs")
    assert first.exit_code == 1, first.stderr  # stopped, and never run again within its time limit
    run = first.run_dir
    recorded = _sent(run)
    fake.offers = [offer(14, dph=0.7, min_bid=0.4)]  # offer 13 is rented by someone else now
    fake.timeline, fake.tick, fake.new_id = DONE, -1, 43
    resumed = cli("resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    (_, (offer_id, payload)) = _created(fake)
    assert offer_id == 14 and payload["bid_price"] == 0.44  # the new offer's lowest bid, x1.10
    assert payload["env"] == {**recorded["payload"]["env"], WAIT_FOR_UPLOAD: "1"}
    assert {k: v for k, v in payload.items() if k not in ("env", "bid_price")} == {
        k: v for k, v in recorded["payload"].items() if k not in ("env", "bid_price")}
    assert ("upload", 43, f"/workspace/runs/{run.name}") in fake.calls  # the run folder went first


@pytest.mark.parametrize("damage", ["missing", "not json", "not a request"])
def test_a_resume_whose_recorded_request_is_unreadable_rents_nothing(vast_spec, fake_vast, tmp_path, damage):
    fake = fake_vast(FakeVast(timeline=STOPPED))
    run = cli("submit", vast_spec(), "--runs-dir", tmp_path / "runs").run_dir
    path = run / "job" / "request.json"
    if damage == "missing":
        path.unlink()
    else:
        path.write_text("{" if damage == "not json" else json.dumps({"offer": 13, "payload": {}, "sends_run_folder": 1}))
    asked_before = len(fake.calls)
    resumed = cli("resume", run)
    assert resumed.exit_code == 2, (resumed.stderr, resumed.exception)
    *_, last = resumed.stderr.strip().splitlines()
    assert "job/request.json" in last and f"gpujob resume {run} --here" in last and "Traceback" not in resumed.stderr
    assert not {"create", "search"} & {call[0] for call in fake.calls[asked_before:]}


def test_refreshed_changes_only_the_offer_its_bid_and_the_wait(vast_spec, tmp_path):
    from runner.runs.record import read
    from runner.runs.state import Run

    from runner.errors import GpujobError

    fake = FakeVast(timeline=STOPPED)
    with pytest.raises(GpujobError):
        run_with(fake, vast_spec(interruptible=True, max_dollars_per_hour=2), tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    recorded = VastRequest.from_json(_sent(run))
    as_was = json.loads(json.dumps(recorded.to_json()))
    fake.offers = [offer(15, min_bid=1.0)]
    again = backend_with(fake).refreshed(Run(run, read(run)), recorded)
    assert again.offer["id"] == 15 and again.payload["bid_price"] == 1.1 and again.sends_run_folder
    assert again.waits_for_upload and not recorded.waits_for_upload
    assert again.label == recorded.label == f"gpujob {run.name}"
    assert recorded.to_json() == as_was  # the recorded request is not edited in place
