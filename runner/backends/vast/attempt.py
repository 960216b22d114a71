"""One attempt of a job on one rented vast.ai instance, which is what the backend's `send` does:
rent the instance the request names, send it what it waits for, follow the job to its end, copy
the run folder back, and destroy the instance on every way out (done, failed, timed out, Ctrl-C),
so nobody is left paying for an idle box.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runner.backends.exit_codes import remote_exit_error
from runner.backends.vast.copying import copy_back, salvage, upload
from runner.backends.vast.following import Watch, follow, phase_seen
from runner.backends.vast.offers import describe_price, hourly_cost
from runner.backends.vast.patience import PatientApi
from runner.backends.vast.rental import Rental, close_rental, rent
from runner.backends.vast.request import VastRequest
from runner.errors import INTERRUPTED, GpujobError
from runner.reports.notify import NOTIFY_ENV
from runner.runs.state import Run
from runner.spec.model import JobSpec


def run_attempt(api: PatientApi, run: Run, spec: JobSpec, request: VastRequest, detach: bool, poll_s: float) -> None:
    """Rent the instance the request names and start the job on it; attached, follow it to its
    end. An instance that waits for an upload gets the user's code first, and with the request's
    `sends_run_folder` the run folder too (a resume)."""
    folder, watch = run.folder, Watch()
    rental = Rental(request.label, before=dict(run.handles))
    try:
        payload = with_billing(with_secrets(request.payload), run, spec, request)
        instance_id = rent(api, run, rental, request.offer["id"], payload, _handles(api, spec, request))
        print(f"vast: rented instance {instance_id}, {describe_price(request.offer, spec)}; it pulls "
              f"{spec.vast.image} first", file=sys.stderr)
        if request.waits_for_upload:
            upload(api, instance_id, spec, folder, watch, request.sends_run_folder, poll_s)
        if detach:
            return
        code = _followed(api, instance_id, spec, watch, folder, poll_s)
        copy_back(api, instance_id, folder)
    except BaseException as err:
        ended = close_rental(api, run, rental, must=False, watch=watch)
        if isinstance(err, KeyboardInterrupt):
            raise GpujobError(f"vast: interrupted; {ended}; what the job had written is in {folder}",
                              INTERRUPTED) from None
        raise
    close_rental(api, run, rental, must=True, watch=watch)
    error = remote_exit_error(code, watch.lines, f"vast (instance {instance_id})", folder)
    if error is not None:
        raise error


def with_secrets(payload: dict) -> dict:
    """The payload as sent: the job's webhooks (credentials) join the instance's environment
    here, so that job/request.json, which keeps the payload, never holds them."""
    webhooks = os.environ.get(NOTIFY_ENV)
    return {**payload, "env": {**payload["env"], NOTIFY_ENV: webhooks}} if webhooks else payload


def with_billing(payload: dict, run: Run, spec: JobSpec, request: VastRequest) -> dict:
    """The payload with the meter's variables (runner/backends/billing.py), billed from the rent on:
    new for each rent, so job/request.json never holds them."""
    from runner.backends.billing import billing_env

    billing = billing_env(run, spec.to_yaml(), hourly_cost(request.offer, spec))
    return {**payload, "env": {**payload["env"], **billing}}


def _handles(api: PatientApi, spec: JobSpec, request: VastRequest) -> dict:
    """What the record keeps of the rent besides its ids: what the cost is counted from."""
    return {"rented_at": api.clock(), "price_per_hour": hourly_cost(request.offer, spec),
            "interruptible": spec.vast.interruptible,
            "offer": {k: request.offer.get(k) for k in ("id", "gpu_name", "num_gpus")}}


def _followed(api: PatientApi, instance_id: int, spec: JobSpec, watch: Watch, folder: Path, poll_s: float) -> int:
    """The job's exit code, followed to its end; a failure or Ctrl-C after the job started
    brings back what it wrote first."""
    try:
        return follow(api, instance_id, spec, watch, poll_s)
    except (GpujobError, KeyboardInterrupt):
        if watch.started:
            salvage(api, instance_id, folder)
        raise
    finally:
        phase_seen(folder, watch)
