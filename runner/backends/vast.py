"""The vast.ai backend: rent the cheapest instance that fits the spec, run the job there in the
project's image, follow it, copy the run folder back, and destroy the instance on every way
out (done, failed, timed out, Ctrl-C), so nobody is left paying for an idle box.

The instance runs the image in vast.ai's "args" launch mode with `gpujob-vast-start` (the
image's copy of images/vast-start.sh) as its entrypoint; the spec and the run folder's name
travel in its environment. That script runs the same worker command as every backend and ends
its output with `gpujob-vast: exit CODE`, which is how this side learns the job's outcome.
"""

from __future__ import annotations

import base64
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runner.backends import Plan
from runner.backends.exit_codes import remote_exit_error
from runner.errors import GpujobError, bad_input, job_failed, last_error_line
from runner.spec import JobSpec
from runner.stop_signals import INTERRUPTED, PREEMPTED
from runner.vast_offers import (bid_price, choose_offer, describe_offer, describe_price, fits, offer_query,
                                offer_type, price)

ENTRYPOINT = "gpujob-vast-start"
REMOTE_RUNS = "/workspace/runs"  # vast-start.sh's default: on the container's disk, which `vastai copy` reads
START_MARK, EXIT_MARK = "gpujob-vast: start ", "gpujob-vast: exit "
POLL_S = 15.0
RUN_GRACE_S = 600  # past resources.timeout_minutes: data download and the final checkpoint
EXITED_GRACE_S = 90  # an exited container may take this long for its last log lines to show
LOG_WINDOW = 2000  # log lines kept for diffing and for error messages
DESTROY_TRIES = 3


@dataclass
class VastPlan(Plan):
    offer: dict = field(default_factory=dict)


@dataclass
class Watch:
    """What following an instance has seen so far."""

    lines: list[str] = field(default_factory=list)
    status: str | None = None
    started: bool = False  # the container ran: from then on there may be a run folder to copy


def instance_request(spec: JobSpec, run_name: str, offer: dict) -> dict:
    """Keyword arguments for vastai's `VastAI.create_instance` (`vastai create instance`)."""
    return {
        "image": spec.vast.image,
        "disk": spec.vast.disk_gb,
        "label": f"gpujob {run_name}",
        "env": {"GPUJOB_SPEC_B64": base64.b64encode(spec.to_yaml().encode()).decode(), "GPUJOB_RUN_NAME": run_name},
        # The args launch mode runs the image as it is (ssh/jupyter modes replace its entrypoint);
        # in it `onstart` is the entrypoint, as with the CLI's --entrypoint.
        "runtype": "args",
        "onstart_cmd": ENTRYPOINT,
        "cancel_unavail": True,  # fail now rather than leave a stopped instance behind
        "bid_price": bid_price(offer, spec),  # None: on-demand
    }


def new_lines(seen: list[str], current: list[str]) -> list[str]:
    """The lines of a log tail not shown yet: `current` is a later window of the same log."""
    for start in range(len(seen)):
        overlap = len(seen) - start
        if seen[start:] == current[:overlap]:
            return current[overlap:]
    return current


def exit_code(lines: list[str]) -> int | None:
    """The code of the last finished attempt, None while one is running (or none started)."""
    for line in reversed(lines):
        if line.startswith(EXIT_MARK):
            return int(line[len(EXIT_MARK):].strip() or 1)
        if line.startswith(START_MARK):
            return None
    return None


def _keep_log(folder: Path, watch: Watch) -> None:
    """The instance's output goes into the run folder as vast.log; a folder that got nothing
    (the instance never ran) is removed rather than left empty."""
    if watch.lines:
        (folder / "vast.log").write_text("\n".join(watch.lines) + "\n")
    elif folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


class VastBackend:
    name = "vast"

    def __init__(self, connect: Callable | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, poll_s: float = POLL_S):
        self.connect, self.sleep, self.clock, self.poll_s = connect, sleep, clock, poll_s

    def _api(self):
        if self.connect is not None:
            return self.connect()
        from runner.vast_api import VastApi

        return VastApi.connect()

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path) -> VastPlan:
        api = self._api()  # first: without a key nothing else can be checked
        if not spec.vast.image:
            raise bad_input("vast.image: backend vast needs your image in a registry vast.ai can pull: "
                            "gpujob image build --tag docker.io/YOU/gpujob:1 --push, then set vast.image to it")
        if spec.resources.nodes > 1:
            raise bad_input("resources.nodes: backend vast rents one instance; set nodes: 1")
        query = offer_query(spec)
        offers = api.search_offers(query, offer_type(spec), spec.vast.disk_gb)
        offer = choose_offer(offers, spec)
        if offer is None:
            raise job_failed(f"vast: no offer fits right now ({len(offers)} found for: {query}); raise "
                             "vast.max_dollars_per_hour, lower vast.min_reliability or pick another resources.gpu")
        details = {"offer": describe_offer(offer, spec), "price": describe_price(offer, spec),
                   "offers that fit": str(sum(fits(o, spec) for o in offers)), "image": spec.vast.image,
                   "query": query}
        return VastPlan(self.name, spec, spec_path, runs_dir, world_size=spec.resources.gpu_request.count,
                        details=details, offer=offer)

    def run(self, plan: VastPlan) -> Path:
        from runner.run_folder import RunFolder

        spec = plan.spec
        api = self._api()
        api.check_can_copy()  # before paying for anything
        folder = RunFolder.create(plan.runs_dir, spec.name).path
        request = instance_request(spec, folder.name, plan.offer)
        instance_id, watch, rented_at = None, Watch(), self.clock()
        try:
            instance_id = self._create(api, plan.offer["id"], request)
            print(f"vast: rented instance {instance_id}, {plan.details['price']}; it pulls {spec.vast.image} first",
                  file=sys.stderr)
            try:
                code = self._follow(api, instance_id, spec, watch)
            except (GpujobError, KeyboardInterrupt):
                if watch.started:
                    self._salvage(api, instance_id, folder)
                raise
            api.copy_back(instance_id, f"{REMOTE_RUNS}/{folder.name}", folder)
        except BaseException as err:
            self._end_rental(api, instance_id, must=False, folder=folder, watch=watch, plan=plan, rented_at=rented_at)
            if isinstance(err, KeyboardInterrupt):
                raise GpujobError(f"vast: interrupted; the instance was destroyed; what the job had written is in "
                                  f"{folder}", INTERRUPTED) from None
            raise
        self._end_rental(api, instance_id, must=True, folder=folder, watch=watch, plan=plan, rented_at=rented_at)
        error = remote_exit_error(code, watch.lines, f"vast (instance {instance_id})", folder)
        if error is not None:
            raise error
        return folder

    def _create(self, api, offer_id: int, request: dict) -> int:
        try:
            return api.create_instance(offer_id, request)
        except BaseException:
            # The request may have failed after vast.ai made the instance (a lost reply, Ctrl-C):
            # look for it by its label, which names this run, and destroy what is found.
            try:
                orphans = api.instances_labelled(request["label"])
            except GpujobError as err:
                print(f"gpujob: {err.message}; check for an instance left behind with: vastai show instances",
                      file=sys.stderr)
                orphans = []
            for orphan in orphans:
                self._destroy(api, orphan, must=False)
            raise

    def _follow(self, api, instance_id: int, spec: JobSpec, watch: Watch) -> int:
        """Print the instance's state and the job's output until the job ends; its exit code."""
        startup_deadline = self.clock() + spec.vast.startup_minutes * 60
        run_deadline = exited_since = None
        while True:
            info = api.show_instance(instance_id)
            status = info.get("actual_status")
            if status != watch.status:
                message = f" ({info['status_msg']})" if info.get("status_msg") else ""
                print(f"vast: instance {instance_id} is {status or 'being set up'}{message}", file=sys.stderr)
                watch.status = status
            if status == "running" and not watch.started:
                watch.started = True
                run_deadline = self.clock() + spec.resources.timeout_minutes * 60 + RUN_GRACE_S
            if watch.started:
                fresh = new_lines(watch.lines, api.logs(instance_id).splitlines())
                for line in fresh:
                    print(line)
                watch.lines = (watch.lines + fresh)[-LOG_WINDOW:]
            code = exit_code(watch.lines)
            if code is not None and not (code == PREEMPTED and spec.vast.interruptible):
                return code
            # An interruptible instance that was outbid gets SIGTERM (the job checkpoints, exit 143)
            # and starts again once its bid wins: keep waiting, within the time limit.
            now = self.clock()
            if not watch.started and now > startup_deadline:
                raise job_failed(f"vast: instance {instance_id} did not start within vast.startup_minutes "
                                 f"({spec.vast.startup_minutes} min); last status: {status} "
                                 f"{info.get('status_msg') or ''}".rstrip())
            if run_deadline is not None and now > run_deadline:
                raise job_failed(f"vast: the job ran past resources.timeout_minutes "
                                 f"({spec.resources.timeout_minutes} min)")
            if watch.started and code is None and status in ("exited", "offline", "unknown"):
                exited_since = exited_since or now
                if now - exited_since > EXITED_GRACE_S:
                    raise job_failed(f"vast: instance {instance_id} is {status} and the job did not finish: "
                                     f"{last_error_line(watch.lines) or 'no output'}")
            else:
                exited_since = None
            self.sleep(self.poll_s)

    def _end_rental(self, api, instance_id: int | None, must: bool, folder: Path, watch: Watch, plan: VastPlan,
                    rented_at: float) -> None:
        """On every way out: destroy the instance, keep its log, record what it cost."""
        self._destroy(api, instance_id, must=must)
        _keep_log(folder, watch)
        self._record_cost(folder, plan, instance_id, rented_at)

    def _record_cost(self, folder: Path, plan: VastPlan, instance_id: int | None, rented_at: float) -> None:
        """cost.json, on every way out that rented something: the offer's price per hour times
        the time from the rent request to the destroy (vast.ai bills by the second)."""
        from runner.cost import describe, estimate, write_cost

        if instance_id is None:
            return
        spec, offer = plan.spec, plan.offer
        hourly = bid_price(offer, spec) if spec.vast.interruptible else price(offer, False)
        basis = ("your bid" if spec.vast.interruptible else "the offer's on-demand price (dph_total, disk included)")
        record = estimate("vast", f"instance {instance_id}: {offer.get('num_gpus')}x {offer.get('gpu_name')}",
                          hourly, self.clock() - rented_at,
                          f"{basis} x the time from renting to destroying, measured here; "
                          "vast.ai also bills network traffic")
        if folder.exists():  # gone when the job never started: the line below still says what it cost
            write_cost(folder, record)
        print(f"vast: {describe(record)}", file=sys.stderr)

    def _salvage(self, api, instance_id: int, folder: Path) -> None:
        """On the way out after a failure: fetch what the job wrote (its error.log, checkpoints)."""
        print(f"vast: copying what the job wrote back to {folder} before destroying the instance "
              "(Ctrl-C skips this)", file=sys.stderr)
        try:
            api.copy_back(instance_id, f"{REMOTE_RUNS}/{folder.name}", folder)
        except GpujobError as err:  # reported, and the failure that brought us here is raised after
            print(f"gpujob: {err.message}", file=sys.stderr)

    def _destroy(self, api, instance_id: int | None, must: bool) -> None:
        """Destroy the instance, retrying; if it cannot be done, tell the user loudly. `must`
        raises that failure (nothing else is being raised); otherwise the original error wins."""
        if instance_id is None:
            return
        for attempt in range(DESTROY_TRIES):
            try:
                api.destroy_instance(instance_id)
                print(f"vast: destroyed instance {instance_id}", file=sys.stderr)
                return
            except GpujobError as err:
                failure = err
                if attempt + 1 < DESTROY_TRIES:
                    self.sleep(5)
        message = (f"vast: could not destroy instance {instance_id} ({failure.message}); it is still billed: "
                   f"destroy it now with: vastai destroy instance {instance_id}")
        print(f"gpujob: {message}", file=sys.stderr)
        if must:
            raise job_failed(message)


BACKEND = VastBackend()
