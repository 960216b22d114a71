"""The vast.ai backend: rent the cheapest instance that fits the spec, run the job there in the
project's image, follow it, copy the run folder back, and destroy the instance on every way out
(done, failed, timed out, Ctrl-C), so nobody is left paying for an idle box.

This class is the Backend interface over the package's parts: the request (request.py), the
market (offers.py), one attempt on a rented instance (attempt.py: renting in rental.py, following
in following.py, files both ways in copying.py), a run's instance as it stands (instance.py), a
sweep's instances running its trials in turn (pool.py), and vast.ai's API with its patience (api.py,
patience.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from runner.backends.base import Backend, Plan, what_is_here
from runner.backends.vast import instance
from runner.backends.vast.attempt import run_attempt
from runner.backends.vast.copying import copy_back
from runner.backends.vast.following import LOG_WINDOW, kept_log, new_lines
from runner.backends.vast.offers import (choose_offer, describe_offer, describe_price, offer_query, offer_type, order_by,
                                         vast_gpu, vast_gpu_names)
from runner.backends.vast.patience import OUTAGE_S, PatientApi
from runner.backends.vast.pool import Pool
from runner.backends.vast.request import VastRequest, instance_request
from runner.errors import bad_input, job_failed, missing_backend
from runner.invocation import command, commands_in
from runner.runs.state import Run, RunState, resume_hint
from runner.spec.model import JobSpec

if TYPE_CHECKING:
    from runner.backends.vast.api import VastService

POLL_S = 15.0
PLAN_OUTAGE_S = 15.0  # --dry-run and the offer search: a user is waiting; say so soon
PLAN_ATTEMPT_S = 6.0  # each of its attempts, in wall-clock time: two fit in PLAN_OUTAGE_S with the wait between
PLAN_CALL_TIMEOUT_S = 5.0  # the SDK's own timeout for them, so it gives up before the wall-clock bound


def _check_spec(spec: JobSpec) -> None:
    """Exit 2 for a spec backend vast cannot run, before vast.ai is asked anything."""
    vast_gpu_names(spec)
    if not spec.vast.image:
        raise bad_input("vast.image: backend vast needs your image in a registry vast.ai can pull: "
                        f"{command('gpujob image build --tag docker.io/YOU/gpujob:1 --push')}, then set vast.image to it")
    if spec.resources.nodes > 1:
        raise bad_input("resources.nodes: backend vast rents one instance; set nodes: 1")


class VastBackend(Backend):
    name = "vast"
    folder_is_here = False  # the folder here is the only handle on a remote job
    ships_code = True  # a copy in the run's job/code, which the job imports
    rents = True
    request_type = VastRequest

    def __init__(self, connect: "Callable[[], VastService] | None" = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, poll_s: float = POLL_S):
        self.connect, self.sleep, self.clock, self.poll_s = connect, sleep, clock, poll_s
        self.pool: Pool | None = None  # while a sweep's driver runs its trials on shared instances

    @contextmanager
    def sweep_machines(self, parallel: int, trials: list[Run]) -> Iterator[None]:
        """At most `parallel` instances for a sweep, each running its trials in turn (pool.py), the
        idle ones a killed driver left (named by `trials`' records) taken back first; every one
        destroyed when the block ends, however it ends."""
        from runner.backends.vast.pool import close

        self.pool = Pool(parallel)
        self.pool.take_back(trials)
        try:
            yield
        finally:
            pool, self.pool = self.pool, None
            if pool.machines:
                close(self._api(), pool)

    def kept_elsewhere(self, run: Run) -> str | None:
        handles = run.handles
        if handles.get("destroyed") or not (handles.get("vast_instance_id") or handles.get("vast_label")):
            return None
        if handles.get("vast_released"):  # a sweep's trial, copied back: its instance is the sweep's
            return None
        named = handles.get("vast_instance_id") or f"labelled '{handles['vast_label']}'"
        return (f"its vast.ai instance {named} is not destroyed yet and bills its disk; "
                f"`{command(f'gpujob fetch {run.folder}')}` copies the folder back and destroys it")

    def readiness(self) -> str | None:
        """The vastai package, an API key where the vastai CLI keeps it, and rsync and ssh for the
        copy back; vast.ai itself is not asked."""
        import importlib.util

        from runner.backends.vast.api import NO_API_KEY, find_api_key, require_copy_tools
        from runner.errors import GpujobError

        if self.connect is not None:  # a service given to it (tests): nothing of this machine's is used
            return None
        if importlib.util.find_spec("vastai") is None:
            return "the vastai package is not installed; install it with: uv sync --extra vast"
        if not find_api_key():
            return commands_in(NO_API_KEY).removeprefix("vast: ")
        try:
            require_copy_tools()
        except GpujobError as err:
            return err.message.removeprefix("vast: ")
        return None

    def takes(self, spec: JobSpec, gpus_here: list[tuple[str, float]]) -> str | None:
        request = spec.resources.gpu_request
        if request is None or self.name not in request.type.provider_names or not spec.vast.image:
            return None
        return (f"resources.gpu asks for {request}, this machine has {what_is_here(request, gpus_here)} and Modal "
                f"does not offer {request.type.name}: renting it on vast.ai")

    def auto_hint(self, spec: JobSpec) -> str | None:
        request = spec.resources.gpu_request
        return "set backend: vast with vast.image" if request and self.name in request.type.provider_names else None

    def _api(self, outage_s: float = OUTAGE_S, while_waiting: bool = False) -> PatientApi:
        """vast.ai's API, each call retried while it fails transiently for up to `outage_s`;
        `while_waiting` (a user waits for the answer): each attempt bounded in wall-clock time,
        quietly, so that the answer comes within `outage_s`."""
        if self.connect is not None:
            raw = self.connect()
        else:
            from runner.backends.vast.api import VastApi

            raw = VastApi.connect(PLAN_CALL_TIMEOUT_S if while_waiting else None)
        if while_waiting:
            return PatientApi(raw, self.sleep, self.clock, outage_s, attempt_s=PLAN_ATTEMPT_S, quiet=True)
        return PatientApi(raw, self.sleep, self.clock, outage_s)

    def check_costless(self, spec: JobSpec, sending: bool) -> None:
        """The package, then the spec (a missing GPU type is the spec's error, whoever runs it),
        then the key, which even the plan needs: it asks vast.ai for offers."""
        from runner.backends.vast.api import NO_API_KEY, find_api_key

        if self.connect is None:
            try:
                import vastai  # noqa: F401
            except ImportError:
                raise missing_backend("vast: the vastai package is not installed; install it with: "
                                      "uv sync --extra vast") from None
        _check_spec(spec)
        if self.connect is None and not find_api_key():
            raise missing_backend(commands_in(NO_API_KEY))

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        api = self._api(PLAN_OUTAGE_S, while_waiting=True)  # first: without a key nothing else can be checked
        offer = self._choose(api, spec)
        request = VastRequest(offer, instance_request(spec, run_name, offer))
        payload = request.payload
        assert spec.vast.image is not None, "_choose checked that the spec names an image"
        rows = [("offer", describe_offer(offer, spec)), ("price", describe_price(offer, spec)),
                ("image", spec.vast.image), ("query", offer_query(spec)),
                ("instance", f"label {payload['label']!r}, disk {payload['disk']} GB, "
                             f"runtype {payload['runtype']}, on start {payload['onstart_cmd']}")]
        return Plan(self.name, spec, spec_path, runs_dir, run_name, vast_gpu(spec).count, request,
                    rows=rows)

    def _choose(self, api, spec: JobSpec) -> dict:
        _check_spec(spec)
        query = offer_query(spec)
        offers = api.search_offers(query, offer_type(spec), spec.vast.disk_gb, order_by(spec))
        offer = choose_offer(offers, spec)
        if offer is None:
            raise job_failed(f"vast: no offer fits right now ({len(offers)} found for: {query}); raise "
                             "vast.max_dollars_per_hour, lower vast.min_reliability or pick another resources.gpu")
        return offer

    def send(self, run: Run, request: VastRequest, detach: bool) -> None:
        """Rent the instance the request names and run the job on it (attempt.py)."""
        from runner.reports.estimate import announce
        from runner.spec.load import load_spec

        spec = load_spec(run.paths.job_spec)  # the spec as the instance gets it
        api = self._api()
        api.check_can_copy()  # before paying for anything
        if not request.sends_run_folder:
            announce(run)
        if self.pool is not None and detach:
            self._send_to_pool(api, run, spec, request)
            return
        run_attempt(api, run, spec, request, detach, self.poll_s)

    def _send_to_pool(self, api: PatientApi, run: Run, spec: JobSpec, request: VastRequest) -> None:
        """A sweep's trial (or one resumed: its run folder goes first): on an idle instance of
        the sweep's, else on one rented for it that then stays for the next trials."""
        from runner.backends.billing import billing_env
        from runner.backends.vast.offers import hourly_cost
        from runner.backends.vast.pool import POOL_ENV, hand_over

        assert self.pool is not None, "called within sweep_machines"
        machine = self.pool.take_idle(api)
        if machine is not None:
            billing = billing_env(run, spec.to_yaml(), hourly_cost(request.offer, spec))
            hand_over(api, machine, run, billing, whole=request.sends_run_folder)
            return
        pooled = VastRequest(request.offer, {**request.payload, "env": {**request.payload["env"], POOL_ENV: "1"}},
                             request.sends_run_folder)
        run_attempt(api, run, spec, pooled, True, self.poll_s)
        self.pool.rented(run)

    def refreshed(self, run: Run, request: VastRequest) -> VastRequest:
        """The recorded request on a new offer (the old one is rented or gone), its instance told
        to wait for the run folder, which holds the checkpoint. An earlier instance still there
        (its destroy failed, or the job ended detached and was never fetched) holds the latest
        checkpoint and bills: it is copied back and destroyed first, and the offer chosen after."""
        from runner.spec.load import load_spec

        spec = load_spec(run.paths.job_spec)
        api = self._api()
        earlier = instance.find(run, lambda: api)
        if earlier is not None:
            api.check_can_copy()  # its disk is copied back before it is destroyed
            if instance.gone(api, run, earlier) is None:
                instance.bring_back_and_destroy(api, run, earlier)
        return request.on_offer(self._choose(api, spec), spec)

    def status(self, run: Run) -> RunState:
        instance_id = self._instance(run)
        return instance.state(self._api() if instance_id is not None else None, run, instance_id)

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        instance_id = self._instance(run)
        if instance_id is None:
            yield from kept_log(run.folder)
            return
        api = self._api()
        seen: list[str] = []
        while True:
            live = follow and self.status(run).live
            fresh = new_lines(seen, instance.run_lines(api, run, instance_id))
            yield from fresh
            seen = (seen + fresh)[-LOG_WINDOW:]
            if not live:
                return
            self.sleep(self.poll_s)

    def still_holds(self, run: Run) -> bool:
        """An instance whose job has ended bills its disk until it is destroyed: cancel destroys it too."""
        return self._instance(run) is not None

    def stop(self, run: Run, state: RunState) -> str | None:
        instance_id = self._instance(run)
        if instance_id is None:
            return None
        api = self._api()
        gone = instance.gone(api, run, instance_id)
        if gone:
            return f"{run.folder.name} is not running: {gone}"
        machine = self.pool.holding(instance_id) if self.pool is not None else None
        if machine is not None and state.live:
            from runner.backends.vast.pool import stop_trial

            if stop_trial(api, machine, run, self.poll_s):
                return f"cancelled {run.folder.name}; instance {instance_id} takes the sweep's next trial"
        instance.stop(api, run, instance_id, state, self.poll_s)
        if self.pool is not None:
            self.pool.forget(instance_id)  # stopped and destroyed with its trial
        return f"cancelled {run.folder.name}; instance {instance_id} destroyed; {resume_hint(run.folder)}"

    def fetch(self, run: Run) -> str:
        instance_id = self._instance(run)
        if instance_id is None:
            return f"{run.folder.name}: its instance is gone and its folder is here"
        api, state = self._api(), self.status(run)
        gone = instance.gone(api, run, instance_id)
        if gone:
            return f"{run.folder.name}: {gone}"
        if state.live:
            copy_back(api, instance_id, run.folder)
            return f"copied what {run.folder.name} has written so far; instance {instance_id} keeps running"
        machine = self.pool.holding(instance_id) if self.pool is not None else None
        if machine is not None:
            from runner.backends.vast.pool import release

            return release(api, machine, run)
        instance.bring_back_and_destroy(api, run, instance_id)
        return f"copied {run.folder.name} back; instance {instance_id} destroyed"

    def detached_note(self, run: Run) -> str:
        instance_id = run.handles.get("vast_instance_id")
        return (f"Instance {instance_id} bills until the job ends, and its disk until `{command('gpujob fetch RUN')}` "
                f"copies the folder back and destroys it; `{command('gpujob cancel RUN')}` stops it at once")

    def _instance(self, run: Run) -> int | None:
        return instance.find(run, self._api)
