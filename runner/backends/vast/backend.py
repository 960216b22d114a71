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
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from runner.runs import record as run_record
from runner.runs.state import FINISHED, PENDING, RUNNING, Run, RunState
from runner.backends.base import Backend, Plan, what_is_here
from runner.backends.exit_codes import remote_exit_error
from runner.backends.vast.patience import OUTAGE_S, PatientApi
from runner.backends.vast.rental import Rental, end_rental, record, rent
from runner.errors import GpujobError, bad_input, job_failed, last_error_line
from runner.runs.paths import JOB
from runner.spec.model import JobSpec
from runner.errors import INTERRUPTED, PREEMPTED
from runner.usercode.shipping import CODE_DIR, code_fields
from runner.backends.vast.offers import (RUN_GRACE_MINUTES, bid_price, choose_offer, describe_offer, describe_price,
                                        hourly_cost, offer_query, offer_type, order_by)

ENTRYPOINT = "gpujob-vast-start"
REMOTE_JOB = "/workspace/job"  # vast-start.sh's job folder: the spec, and the user's code in code/
REMOTE_RUNS = "/workspace/runs"  # vast-start.sh's default: on the container's disk, which `vastai copy` reads
START_MARK, EXIT_MARK = "gpujob-vast: start ", "gpujob-vast: exit "
POLL_S = 15.0
RUN_GRACE_S = RUN_GRACE_MINUTES * 60  # past resources.timeout_minutes: data download, the final checkpoint
EXITED_GRACE_S = 90  # an exited container may take this long for its last log lines to show
LOG_WINDOW = 2000  # log lines kept for diffing and for error messages
PLAN_OUTAGE_S = 15.0  # --dry-run and the offer search: a user is waiting; say so soon
PLAN_ATTEMPT_S = 6.0  # each of its attempts, in wall-clock time: two fit in PLAN_OUTAGE_S with the wait between
PLAN_CALL_TIMEOUT_S = 5.0  # the SDK's own timeout for them, so it gives up before the wall-clock bound
NOT_STARTED = (None, "loading", "created", "scheduling")  # actual_status before the container ever ran
STOPPED = ("exited", "stopped", "offline", "unknown", "inactive")  # the container is not running
CANCEL_WAIT_S = 120  # cancel: time for the job to checkpoint after the instance is told to stop
VAST_LOG = "vast.log"
UPLOADED = ".gpujob-uploaded"  # vast-start.sh waits for it before a resumed job starts
# What each side keeps to itself: the instance's folder needs the record (it makes the folder a
# run), this side's record is the one that names the instance, and job/, the locks, the log and
# the cost are this side's bookkeeping.
UPLOAD_SKIPS = (".lock", "job", VAST_LOG, "cost.json", UPLOADED)
COPY_BACK_SKIPS = ("submission.json", *UPLOAD_SKIPS)


@dataclass(frozen=True)
class VastRequest:
    """The offer to rent and the instance to ask for (VastAI.create_instance's keyword arguments)."""

    offer: dict
    payload: dict


@dataclass
class Watch:
    """What following an instance has seen so far."""

    lines: list[str] = field(default_factory=list)
    status: str | None = None
    started: bool = False  # the container ran: from then on there may be a run folder to copy
    started_t: float | None = None  # when that was first seen, in epoch seconds (a start-up phase)

    def start(self) -> None:
        self.started, self.started_t = True, time.time()


def instance_request(spec: JobSpec, run_name: str, offer: dict) -> dict:
    """Keyword arguments for vastai's `VastAI.create_instance` (`vastai create instance`)."""
    # The user's code is sent once the instance runs: the job waits for it (vast-start.sh).
    wait = {"GPUJOB_WAIT_FOR_UPLOAD": "1"} if code_fields(spec) else {}
    return {
        "image": spec.vast.image,
        "disk": spec.vast.disk_gb,
        "label": f"gpujob {run_name}",
        "env": {"GPUJOB_SPEC_B64": base64.b64encode(spec.to_yaml().encode()).decode(), "GPUJOB_RUN_NAME": run_name,
                "GPUJOB_INNER_RUN": "1", **wait},
        # The args launch mode runs the image as it is (ssh/jupyter modes replace its entrypoint);
        # in it `onstart` is the entrypoint, as with the CLI's --entrypoint.
        "runtype": "args",
        "onstart_cmd": ENTRYPOINT,
        "cancel_unavail": True,  # fail now rather than leave a stopped instance behind
        "bid_price": bid_price(offer, spec),  # None: on-demand
    }


def _phase_seen(folder: Path, watch: "Watch") -> None:
    """The instance's start (rental, image pull, container start), once seen, as a start-up
    phase: recorded once."""
    if watch.started_t is not None:
        run_record.phase_ended(folder, "instance running", "rented, image pulled, container started",
                               t=watch.started_t)
        watch.started_t = None


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
    """The instance's output goes into the run folder as vast.log (after what earlier attempts
    left there: a resumed run's log goes on)."""
    if watch.lines and folder.is_dir():
        with open(folder / VAST_LOG, "a") as kept:
            kept.write("\n".join(watch.lines) + "\n")


def _kept_log(folder: Path) -> list[str]:
    path = folder / VAST_LOG
    return path.read_text(errors="replace").splitlines() if path.exists() else []


@contextmanager
def _upload_mark() -> Iterator[Path]:
    """An empty file to send as the upload's last step, removed once sent (or not)."""
    with tempfile.TemporaryDirectory(prefix="gpujob-upload-") as scratch:
        mark = Path(scratch) / UPLOADED
        mark.touch()
        yield mark


class VastBackend(Backend):
    name = "vast"
    folder_is_here = False  # the folder here is the only handle on a remote job
    ships_code = True  # a copy in the run's job/code, which the job imports
    rents = True

    def takes(self, spec: JobSpec, gpus_here: list[tuple[str, float]]) -> str | None:
        request = spec.resources.gpu_request
        if request is None or self.name not in request.type.provider_names or not spec.vast.image:
            return None
        return (f"resources.gpu asks for {request}, this machine has {what_is_here(request, gpus_here)} and Modal "
                f"does not offer {request.type.name}: renting it on vast.ai")

    def auto_hint(self, spec: JobSpec) -> str | None:
        request = spec.resources.gpu_request
        return "set backend: vast with vast.image" if request and self.name in request.type.provider_names else None

    def __init__(self, connect: Callable | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, poll_s: float = POLL_S):
        self.connect, self.sleep, self.clock, self.poll_s = connect, sleep, clock, poll_s

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

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        api = self._api(PLAN_OUTAGE_S, while_waiting=True)  # first: without a key nothing else can be checked
        offer = self._choose(api, spec)
        request = VastRequest(offer, instance_request(spec, run_name, offer))
        rows = [("offer", describe_offer(offer, spec)), ("price", describe_price(offer, spec)),
                ("image", spec.vast.image), ("query", offer_query(spec)),
                ("instance", f"label {request.payload['label']!r}, disk {request.payload['disk']} GB, "
                             f"runtype {request.payload['runtype']}, on start {request.payload['onstart_cmd']}")]
        return Plan(self.name, spec, spec_path, runs_dir, run_name, spec.resources.gpu_request.count, request,
                    rows=rows)

    def _choose(self, api, spec: JobSpec) -> dict:
        if not spec.vast.image:
            raise bad_input("vast.image: backend vast needs your image in a registry vast.ai can pull: "
                            "gpujob image build --tag docker.io/YOU/gpujob:1 --push, then set vast.image to it")
        if spec.resources.nodes > 1:
            raise bad_input("resources.nodes: backend vast rents one instance; set nodes: 1")
        query = offer_query(spec)
        offers = api.search_offers(query, offer_type(spec), spec.vast.disk_gb, order_by(spec))
        offer = choose_offer(offers, spec)
        if offer is None:
            raise job_failed(f"vast: no offer fits right now ({len(offers)} found for: {query}); raise "
                             "vast.max_dollars_per_hour, lower vast.min_reliability or pick another resources.gpu")
        return offer

    def submit(self, plan: Plan, run: Run, detach: bool) -> None:
        from runner.reports.estimate import announce

        api = self._api()
        api.check_can_copy()  # before paying for anything
        (run.folder / JOB).mkdir(exist_ok=True)
        (run.folder / JOB / "spec.yaml").write_text(plan.spec.to_yaml())  # what `resume` sends again
        announce(run)
        self._rent(api, plan.spec, run, plan.request, detach, upload=bool(code_fields(plan.spec)), whole=False)

    def _rent(self, api, spec: JobSpec, run: Run, request: "VastRequest", detach: bool, upload: bool,
              whole: bool = True) -> None:
        """Rent the instance the request names and start the job on it; attached, follow it to
        its end. With `upload`, the user's code goes to the instance first, and with `whole` the
        run folder too (a resume)."""
        folder, watch = run.folder, Watch()
        (folder / JOB).mkdir(exist_ok=True)
        rental = Rental(request.payload["label"], before=dict(run.handles))
        try:
            instance_id = rent(api, run, rental, request.offer["id"], request.payload, {
                "rented_at": self.clock(), "price_per_hour": hourly_cost(request.offer, spec),
                "interruptible": spec.vast.interruptible,
                "offer": {k: request.offer.get(k) for k in ("id", "gpu_name", "num_gpus")}})
            print(f"vast: rented instance {instance_id}, {describe_price(request.offer, spec)}; it pulls "
                  f"{spec.vast.image} first", file=sys.stderr)
            if upload:
                self._upload(api, instance_id, spec, folder, watch, whole)
            if detach:
                return
            try:
                code = self._follow(api, instance_id, spec, watch)
            except (GpujobError, KeyboardInterrupt):
                if watch.started:
                    self._salvage(api, instance_id, folder)
                raise
            finally:
                _phase_seen(folder, watch)
            api.copy_back(instance_id, f"{REMOTE_RUNS}/{folder.name}", folder, exclude=COPY_BACK_SKIPS)
        except BaseException as err:
            ended = self._end_rental(api, run, rental, must=False, watch=watch)
            if isinstance(err, KeyboardInterrupt):
                raise GpujobError(f"vast: interrupted; {ended}; what the job had written is in {folder}",
                                  INTERRUPTED) from None
            raise
        self._end_rental(api, run, rental, must=True, watch=watch)
        error = remote_exit_error(code, watch.lines, f"vast (instance {instance_id})", folder)
        if error is not None:
            raise error

    def _upload(self, api, instance_id: int, spec: JobSpec, folder: Path, watch: Watch, whole: bool) -> None:
        """Wait for the instance, send it the user's code (job/code) and, for a resume (`whole`),
        the run folder with its checkpoint; then the mark that lets vast-start.sh begin (it
        waits for it, GPUJOB_WAIT_FOR_UPLOAD)."""
        deadline = self.clock() + spec.vast.startup_minutes * 60
        while (api.show_instance(instance_id) or {}).get("actual_status") != "running":
            if self.clock() > deadline:
                raise job_failed(f"vast: instance {instance_id} did not start within vast.startup_minutes "
                                 f"({spec.vast.startup_minutes} min)")
            self.sleep(self.poll_s)
        watch.start()
        _phase_seen(folder, watch)
        remote = f"{REMOTE_RUNS}/{folder.name}"
        if whole:
            api.copy_to(instance_id, folder, remote, exclude=UPLOAD_SKIPS)
        code = folder / JOB / CODE_DIR
        if code.is_dir():
            api.copy_to(instance_id, code, f"{REMOTE_JOB}/{CODE_DIR}")
        with _upload_mark() as mark:
            api.copy_to(instance_id, mark, f"{remote}/{UPLOADED}" if whole else f"{REMOTE_JOB}/{UPLOADED}")
        if whole:
            print(f"vast: sent the run folder to instance {instance_id}; the job continues from its checkpoint",
                  file=sys.stderr)
        else:
            print(f"vast: sent your code to instance {instance_id}; the job starts", file=sys.stderr)

    def status(self, run: Run) -> RunState:
        from runner.runs.state import ended_state

        instance_id = self._instance(run)
        if instance_id is None:
            return ended_state(run, exit_code(_kept_log(run.folder)), "its instance is gone")
        api = self._api()
        info = api.show_instance(instance_id) or {}
        status = info.get("actual_status")
        if not info:
            return ended_state(run, None, f"instance {instance_id} is gone (destroyed outside gpujob)")
        lines = api.logs(instance_id).splitlines() if status not in (None, "loading", "created") else []
        code = exit_code(lines)
        if status in (None, "loading", "created", "scheduling") and code is None:
            return RunState(PENDING, f"instance {instance_id} is {status or 'being set up'}")
        if status == "running" and code is None:
            return RunState(RUNNING, f"on instance {instance_id}; it bills until the job ends")
        fetch = f"`gpujob fetch {run.folder}` copies the folder back and destroys the instance"
        if code == 0:
            return RunState(FINISHED, f"on instance {instance_id}, which bills storage until {fetch}", 0)
        if code is None and run.handles.get("interruptible"):
            return RunState(PENDING, f"instance {instance_id} is {status} (outbid?); it resumes when it runs again")
        state = ended_state(run, code, f"instance {instance_id} is {status}")
        state.detail += f"; {fetch}"
        return state

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        instance_id = self._instance(run)
        if instance_id is None:
            yield from _kept_log(run.folder)
            return
        api, seen = self._api(), []
        while True:
            live = follow and self.status(run).live
            fresh = new_lines(seen, api.logs(instance_id).splitlines())
            yield from fresh
            seen = (seen + fresh)[-LOG_WINDOW:]
            if not live:
                return
            self.sleep(self.poll_s)

    def cancel(self, run: Run) -> str:
        from runner.runs.state import resume_hint

        state = self.status(run)
        instance_id = self._instance(run)
        if instance_id is None:
            return f"{run.folder.name} is not running ({state.describe()}); nothing to cancel"
        api = self._api()
        gone = self._gone(api, run, instance_id)
        if gone:
            return f"{run.folder.name} is not running: {gone}"
        run.record.note("cancel asked")
        run_record.write(run.folder, run.record)
        if state.state == RUNNING:
            api.stop_instance(instance_id)  # the container gets SIGTERM: the job checkpoints and exits
            deadline = self.clock() + CANCEL_WAIT_S
            while exit_code(api.logs(instance_id).splitlines()) is None and self.clock() < deadline:
                self.sleep(min(self.poll_s, 5))
        self._bring_back_and_destroy(api, run, instance_id)
        return f"cancelled {run.folder.name}; instance {instance_id} destroyed; {resume_hint(run.folder)}"

    def fetch(self, run: Run) -> str:
        instance_id = self._instance(run)
        if instance_id is None:
            return f"{run.folder.name}: its instance is gone and its folder is here"
        api, state = self._api(), self.status(run)
        gone = self._gone(api, run, instance_id)
        if gone:
            return f"{run.folder.name}: {gone}"
        if state.live:
            api.copy_back(instance_id, f"{REMOTE_RUNS}/{run.folder.name}", run.folder, exclude=COPY_BACK_SKIPS)
            return f"copied what {run.folder.name} has written so far; instance {instance_id} keeps running"
        self._bring_back_and_destroy(api, run, instance_id)
        return f"copied {run.folder.name} back; instance {instance_id} destroyed"

    def _instance(self, run: Run) -> int | None:
        """The run's instance, while it may still exist: the recorded id or, for a rent cut off
        before its id was recorded (gpujob killed in between), the one listed with the run's label."""
        handles = run.handles
        if handles.get("destroyed"):
            return None
        if handles.get("vast_instance_id") is not None or not handles.get("vast_label"):
            return handles.get("vast_instance_id")
        made = self._api().instances_labelled(handles["vast_label"])
        return min(made) if made else None

    def _gone(self, api, run: Run, instance_id: int) -> str | None:
        """Whether vast.ai no longer has the instance (destroyed outside gpujob): then there is
        nothing to stop, copy or destroy, and nothing is billed. Recorded, and said in a line."""
        if api.show_instance(instance_id):
            return None
        record(run, destroyed=True)
        return (f"instance {instance_id} is gone (destroyed outside gpujob), so nothing was copied back and "
                f"nothing is billed; {run.folder} holds what was copied before")

    def _bring_back_and_destroy(self, api, run: Run, instance_id: int) -> None:
        # One found by its label may have others beside it (a rent whose answer was lost): those go too.
        found = run.handles.get("vast_instance_id") != instance_id
        rental = Rental(run.handles["vast_label"], instance_id=instance_id, asked=True, uncertain=found)
        if found:
            record(run, vast_instance_id=instance_id)
        watch = Watch(lines=api.logs(instance_id).splitlines(), started=True)
        self._salvage(api, instance_id, run.folder)
        self._end_rental(api, run, rental, must=True, watch=watch)

    def resume(self, run: Run, detach: bool) -> None:
        """Rent a new instance, send it the run folder (the checkpoint is in it), and continue.
        An earlier instance still there (its destroy failed, or the job ended detached and was
        never fetched) holds the latest checkpoint and bills: it is copied back and destroyed first."""
        from runner.spec.load import load_spec

        spec = load_spec(run.folder / JOB / "spec.yaml")
        api = self._api()
        api.check_can_copy()
        earlier = self._instance(run)
        if earlier is not None and self._gone(api, run, earlier) is None:
            self._bring_back_and_destroy(api, run, earlier)
        offer = self._choose(api, spec)
        payload = instance_request(spec, run.folder.name, offer)
        payload["env"]["GPUJOB_WAIT_FOR_UPLOAD"] = "1"
        self._rent(api, spec, run, VastRequest(offer, payload), detach, upload=True)

    def detached_note(self, run: Run) -> str:
        instance_id = run.handles.get("vast_instance_id")
        return (f"Instance {instance_id} bills until the job ends, and its disk until `gpujob fetch RUN` copies the "
                "folder back and destroys it; `gpujob cancel RUN` stops it at once")

    def _follow(self, api, instance_id: int, spec: JobSpec, watch: Watch) -> int:
        """Print the instance's state and the job's output until the job ends; its exit code."""
        startup_deadline = self.clock() + spec.vast.startup_minutes * 60
        run_deadline = exited_since = None
        interruptible = spec.vast.interruptible
        while True:
            info = api.show_instance(instance_id)
            status = info.get("actual_status")
            if status != watch.status:
                message = f" ({info['status_msg']})" if info.get("status_msg") else ""
                print(f"vast: instance {instance_id} is {status or 'being set up'}{message}", file=sys.stderr)
                watch.status = status
            if status not in NOT_STARTED and not watch.started:
                # Running, or already past it: a job that ends between two polls goes from loading
                # straight to exited, and is still followed to its exit line and copied back.
                watch.start()
                run_deadline = self.clock() + spec.resources.timeout_minutes * 60 + RUN_GRACE_S
            if watch.started:
                fresh = new_lines(watch.lines, api.logs(instance_id).splitlines())
                for line in fresh:
                    print(line)
                watch.lines = (watch.lines + fresh)[-LOG_WINDOW:]
            code = exit_code(watch.lines)
            if code is not None and not (code == PREEMPTED and interruptible):
                return code
            now = self.clock()
            if not watch.started and now > startup_deadline:
                raise job_failed(f"vast: instance {instance_id} did not start within vast.startup_minutes "
                                 f"({spec.vast.startup_minutes} min); last status: {status} "
                                 f"{info.get('status_msg') or ''}".rstrip())
            if run_deadline is not None and now > run_deadline:
                raise job_failed(f"vast: the job ran past resources.timeout_minutes "
                                 f"({spec.resources.timeout_minutes} min)")
            stopped = watch.started and status in STOPPED and (code is None or code == PREEMPTED)
            if stopped and interruptible:
                # Outbid: vast.ai pauses an interruptible instance (it may not even see SIGTERM) and
                # runs it again when the bid wins; the start script then resumes from the
                # checkpoint on its disk. Wait for that, within the time limit.
                if exited_since is None:
                    print(f"vast: instance {instance_id} is {status} (outbid?); waiting for it to run again, "
                          f"until the time limit", file=sys.stderr)
                exited_since = exited_since or now
            elif stopped:
                exited_since = exited_since or now
                if now - exited_since > EXITED_GRACE_S:
                    raise job_failed(f"vast: instance {instance_id} is {status} and the job did not finish: "
                                     f"{last_error_line(watch.lines) or 'no output'}")
            else:
                exited_since = None
            self.sleep(self.poll_s)

    def _end_rental(self, api, run: Run, rental: Rental, must: bool, watch: Watch) -> str:
        """On every way out: destroy what was rented, keep its log, record what it cost; what
        became of the rental, in words."""
        try:
            return end_rental(api, run, rental, must)
        finally:
            try:
                _keep_log(run.folder, watch)
                if rental.instance_id is not None:
                    self._record_cost(run, rental.instance_id)
            except OSError as err:  # said, never raised over what brought us here
                print(f"gpujob: warning: could not keep the instance's log and cost in {run.folder}: {err}",
                      file=sys.stderr)

    def _record_cost(self, run: Run, instance_id: int) -> None:
        """cost.json, on every way out that rented something: the offer's price per hour times
        the time from the rent request to the destroy (vast.ai bills by the second)."""
        from runner.reports.cost import describe, estimate, write_cost

        h = run.handles
        offer = h.get("offer", {})
        basis = ("your bid plus the disk's storage price" if h.get("interruptible")
                 else "the offer's on-demand price (dph_total, disk included)")
        cost = estimate("vast", f"instance {instance_id}: {offer.get('num_gpus')}x {offer.get('gpu_name')}",
                        h["price_per_hour"], self.clock() - h["rented_at"],
                        f"{basis} x the time from renting to destroying, measured here; "
                        "vast.ai also bills network traffic")
        if run.folder.exists():  # gone when the job never started: the line below still says what it cost
            write_cost(run.folder, cost)
        print(f"vast: {describe(cost)}", file=sys.stderr)

    def _salvage(self, api, instance_id: int, folder: Path) -> None:
        """On the way out after a failure: fetch what the job wrote (its error.log, checkpoints)."""
        print(f"vast: copying what the job wrote back to {folder} before destroying the instance "
              "(Ctrl-C skips this)", file=sys.stderr)
        try:
            api.copy_back(instance_id, f"{REMOTE_RUNS}/{folder.name}", folder, exclude=COPY_BACK_SKIPS)
        except GpujobError as err:  # reported, and the failure that brought us here is raised after
            print(f"gpujob: {err.message}", file=sys.stderr)



