"""The modal backend: run a job on Modal's GPUs and bring its run folder back.

`plan` turns the spec into a ModalRequest, the exact call that will be made: the GPU in
Modal's syntax (checked against the types Modal offers), the timeout, the retry policy, the
world size and the run's name, with the image and a cost per hour; `--dry-run` prints it.
`submit` checks credentials before anything touches the network, starts
runner/backends/modal/app.py's `train_remote` on an ephemeral app (its logs stream to this
terminal) and, when the job ends, copies its folder from the volume into runs/. The call id
goes into the run's submission record (never a token), which is how `status`, `logs`,
`cancel`, `fetch` and `resume` find a run later, from any terminal.
"""

from __future__ import annotations

import json
import sys
import uuid

import yaml
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from runner.backends.base import Backend, Plan, what_is_here
from runner.backends.modal.request import APP, SCALEDOWN_WINDOW_S, TIMEOUT_GRACE_S, VOLUME, ModalRequest, is_chained, modal_request
from runner.errors import (
    BAD_INPUT,
    BUDGET_REACHED,
    INTERRUPTED,
    MISSING_BACKEND,
    GpujobError,
    bad_input,
    job_failed,
    missing_backend,
)
from runner.errors import PREEMPTED as PREEMPTED_CODE
from runner.gpus import PRICES_READ_ON
from runner.invocation import command, commands_in
from runner.runs import record as run_record
from runner.runs.lines import summary_line
from runner.runs.paths import JOB, SUMMARY, RunPaths
from runner.runs.state import (
    CANCELLED,
    FAILED,
    FINISHED,
    OVER_BUDGET,
    PREEMPTED,
    RUNNING,
    Run,
    RunState,
)
from runner.spec.model import JobSpec
from runner.usercode.shipping import CODE_DIR, code_fields

KEY_PINS = ("torch", "torchvision")


def describe_timeout(spec: JobSpec, timeout_s: int) -> str:
    if is_chained(spec):
        return (f"{spec.resources.timeout_minutes} min for the job across all attempts, past Modal's limit for one "
                f"call: it runs as a chain of calls of {timeout_s} s each, every one stopping itself with a "
                "checkpoint before its limit and spawning the next, which resumes from it")
    return (f"{spec.resources.timeout_minutes} min for the job across all attempts; Modal's {timeout_s} s per "
            f"attempt adds {TIMEOUT_GRACE_S // 60} min of start-up and save")


def describe_image() -> str:
    from runner.backends.modal.app import LOCAL_SOURCES, PYTHON_VERSION, REQUIREMENTS
    from runner.errors import missing_backend

    if not REQUIREMENTS.is_file():
        raise missing_backend(f"modal: {REQUIREMENTS} is missing; submit from a gpujob checkout")
    pins = dict(line.split(";")[0].strip().split("==", 1) for line in REQUIREMENTS.read_text().splitlines()
                if "==" in line and not line.startswith((" ", "#")))
    key = ", ".join(f"{name} {pins[name]}" for name in KEY_PINS if name in pins)
    return (f"debian_slim + python {PYTHON_VERSION}, {len(pins)} pinned packages from images/requirements.txt "
            f"({key}) installed with uv, plus the local source of: {', '.join(LOCAL_SOURCES)}")


def describe_cost(spec: JobSpec, timeout_s: int, retries: int) -> str:
    """The price, and what one submission can cost at most: its time limit holds across all its
    attempts (runner/backends/modal/app.py), and each attempt may add its start-up and save."""
    request = spec.resources.gpu_request
    if request is None:
        return "CPU only: Modal bills CPU and memory by the second (not estimated here)"
    per_gpu = request.type.price_per_hour["modal"]
    hourly = per_gpu * request.count
    attempts = retries + 1
    most_h = spec.resources.timeout_minutes / 60 + attempts * TIMEOUT_GRACE_S / 3600
    return (f"${hourly:.2f}/h for {request} (${per_gpu:.2f} per GPU-hour, Modal's list price read {PRICES_READ_ON}; "
            f"CPU and memory extra); at most ${hourly * most_h:.2f} for the whole job as submitted (a resume has its "
            f"own): its {spec.resources.timeout_minutes} min limit across all {attempts} attempts, plus up to "
            f"{TIMEOUT_GRACE_S // 60} min of start-up and save for each; no container is billed once the "
            "job has ended (each serves its one call and stops)")


class ModalBackend(Backend):
    name = "modal"
    folder_is_here = False  # the folder here is the only handle on a remote job
    ships_code = True  # a copy in the run's job/code, which the job imports
    rents = True
    request_type = ModalRequest
    stop_slack_s = 60  # cancel: past train.stop_grace_s, Modal's time to end the call once it has saved

    def readiness(self) -> str | None:
        """Modal's client installed, and a token where it looks for one (read, not sent)."""
        from runner.backends.modal.service import require_credentials

        try:
            require_credentials()  # imports Modal's client first: a missing package says so
        except GpujobError as err:
            return err.message.removeprefix("modal: ")
        return None

    def takes(self, spec: JobSpec, gpus_here: list[tuple[str, float]]) -> str | None:
        request = spec.resources.gpu_request
        if request is None or self.name not in request.type.provider_names:
            return None
        return f"resources.gpu asks for {request} and this machine has {what_is_here(request, gpus_here)}: renting it on Modal"

    def __init__(self, connect=None):
        self.connect = connect  # tests: a stand-in for ModalService

    def _service(self):
        if self.connect is not None:
            return self.connect()
        from runner.backends.modal.client import SdkClient
        from runner.backends.modal.service import ModalService, require_credentials

        require_credentials()  # before anything touches the network
        return ModalService(SdkClient())

    def check_costless(self, spec: JobSpec, sending: bool) -> None:
        """Modal's client, the spec's fit to Modal, then a token where the job is to be sent: the
        dry run shows where the token is (or that there is none) among its rows."""
        from runner.backends.modal.service import import_modal, require_credentials

        import_modal()
        modal_request(spec, spec.name)
        if spec.resources.max_usd is not None and hourly_price(spec) is None:
            raise bad_input("resources.max_usd: Modal's CPU and memory prices are not in gpujob's catalog, so a CPU "
                            "job's cost is not counted; a budget needs resources.gpu")
        if sending and self.connect is None:
            require_credentials()

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        from runner.backends.modal.service import (
            NO_CREDENTIALS,
            credentials_source,
            import_modal,
        )

        import_modal()  # first: the App is built with Modal's client
        from runner.backends.modal.app import VOLUME_MOUNT, VOLUME_NAME, function_for

        request = modal_request(spec, run_name)
        if code_fields(spec):  # the image adds the run's copy of the user's code (runner/usercode/shipping.py)
            request = replace(request, code_dir=str((runs_dir / run_name / JOB / CODE_DIR).resolve()))
        function_for(request)  # the call must be constructible before anything is paid for
        source = credentials_source()
        rows = [("modal gpu", request.gpu or "none (cpu)"), ("image", describe_image()),
                ("timeout", describe_timeout(spec, request.timeout_s)),
                ("retries", f"{request.retries}; a restarted attempt resumes from the last checkpoint"),
                ("volume", f"{VOLUME_NAME} at {VOLUME_MOUNT}; the run folder is {VOLUME_MOUNT}/{run_name}"),
                ("call", request.call()),
                ("cost", describe_cost(spec, request.timeout_s, request.retries)),
                ("credentials", f"from {source}" if source else commands_in(NO_CREDENTIALS).removeprefix("modal: "))]
        return Plan(self.name, spec, spec_path, runs_dir, run_name, request.world_size, request, rows=rows)

    def submit(self, plan: Plan, run: Run, detach: bool) -> None:
        """The base's submit (job/spec.yaml, job/request.json, send), once Modal has answered that
        no run of this name is on the volume; the estimate is said before anything is spawned."""
        from runner.backends.modal.service import FIRST_CONTACT_S, modal_errors, within
        from runner.reports.estimate import announce

        request = plan.request
        assert isinstance(request, ModalRequest), request  # plan() made it
        with modal_errors("looking up the volume"):
            taken = request.run_name in within(FIRST_CONTACT_S, "connecting to Modal", self._service().run_names)
        if taken:
            raise bad_input(f"modal: a run named {request.run_name} is already on the volume; submit again")
        announce(run)
        super().submit(plan, run, detach)

    def send(self, run: Run, request: ModalRequest, detach: bool) -> None:
        """Spawn the call as a new submission of the run; attached, follow it and bring the folder back.
        What is said about the call is about this spawn's, never the one the record held before it.
        A resume sends the recorded request again under the same run name: the volume's folder
        holds the checkpoint, so the job continues from it."""
        from runner.backends.modal.service import LostTouch, modal_errors

        from runner.backends.billing import billing_env

        service = self._service()
        request = replace(request, submission=uuid.uuid4().hex,  # a new submission of the run
                          billing=billing_env(run, request.spec_yaml, hourly_price(load_spec_text(request.spec_yaml))))

        def spawned(call_id: str) -> None:
            # modal_submission and modal_chain_start: where this submission's chain begins in
            # modal_calls, for its handovers kept on the volume (chain.py)
            run.record = run_record.update(run.folder, handles={"modal_call_id": call_id, "modal_app": APP,
                                                                "modal_volume": VOLUME,
                                                                "modal_calls": [*_calls(run), call_id],
                                                                "modal_submission": request.submission,
                                                                "modal_chain_start": len(_calls(run))})
            about.call_id = call_id  # this spawn's call, now that the run record names it
            # What this side sees of the start: the app and image set up and the call spawned; the
            # container's own start is the job's (timing.json).
            run.record = run_record.phase_ended(run.folder, "spawned", "Modal app, image and call set up")
            print(f"modal: started {run.folder.name} (call {call_id})", file=sys.stderr)

        try:
            with modal_errors("running the job") as about:
                state = service.start(request, run.folder.name, detach, spawned,
                                      continued=lambda call_id: _continued(run, call_id))
        except KeyboardInterrupt:
            if about.call_id and detach:
                what = f"the job was started and runs on Modal; its folder {run.folder} tracks it"
            elif about.call_id:
                what = ("the remote job was stopped; download what it wrote with: "
                        f"{command(f'gpujob fetch {run.folder}')}")
            else:
                what = "nothing was started"
            raise GpujobError(f"modal: interrupted; {what}", INTERRUPTED) from None
        except LostTouch as lost:
            raise missing_backend(
                f"modal: Modal had trouble for {_duration(lost.lasted_s)} while this terminal followed the job "
                f"({lost.cause}); the job is still running on Modal (call {lost.call_id}): follow it again with "
                f"`{command(f'gpujob logs {run.folder} --follow')}`, or see "
                f"`{command(f'gpujob status {run.folder}')}`") from None
        if not detach:
            self._bring_back(service, run.folder, state, about.call_id)

    def status(self, run: Run) -> RunState:
        from runner.runs.state import ended_state

        state = self._call_state(run)
        if state.running:
            return RunState(RUNNING, f"on Modal (call {run.handles['modal_call_id']})")
        if state.state == "finished":
            here = (run.folder / SUMMARY).exists()
            return RunState(FINISHED, summary_line(run.folder) if here else
                            f"on Modal's volume; `{command(f'gpujob fetch {run.folder}')}` brings it here", 0)
        if state.state == "ended":  # Modal forgot the outcome: the folder tells, where it was fetched
            return ended_state(run, None, "Modal no longer keeps its result; `gpujob fetch` downloads what it wrote")
        message = _said_here(state.message, run.folder)
        if state.exit_code == BUDGET_REACHED:
            return RunState(OVER_BUDGET, message, state.exit_code)
        if state.exit_code in (INTERRUPTED, PREEMPTED_CODE) or run.record.cancel_asked:
            kind = CANCELLED if run.record.cancel_asked else PREEMPTED
            return RunState(kind, _stopped_detail(run, kind, message), state.exit_code)
        return RunState(FAILED, message, state.exit_code)

    def _call_state(self, run: Run, doing: str = "asking Modal about the job"):
        """The state of the job's last call, following a chain past Modal's per-call limit from
        the call the record names; the record then names every call the chain has reached."""
        from runner.backends.modal.chain import handover_file
        from runner.backends.modal.service import modal_errors

        service, known = self._service(), _call_id(run)

        def successor_of(after: int) -> str | None:  # of the call `after` calls past the known one
            submission, start = run.handles.get("modal_submission"), run.handles.get("modal_chain_start")
            if submission is None or start is None or known not in _calls(run):
                return None
            place = _calls(run).index(known) - start + after + 1
            return service.read_text(handover_file(run.folder.name, submission, place))

        with modal_errors(doing, _call_id(run)):
            calls, state = service.poll_chain(_call_id(run), successor_of)
        for call_id in calls[1:]:
            _continued(run, call_id)
        return state

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        from runner.backends.modal.service import modal_errors

        service = self._service()
        with modal_errors("reading the job's logs", _call_id(run)):
            yield from service.logs(_call_id(run), follow)

    def ask_to_stop(self, run: Run, state: RunState, grace_s: int) -> None:
        from runner.backends.modal.service import modal_errors

        self._call_state(run, "cancelling the job")  # the chain's live call
        with modal_errors("cancelling the job", _call_id(run)):
            self._service().cancel(_call_id(run))  # the job checkpoints to the volume and returns

    def still_running(self, run: Run) -> bool:
        """Whether the cancelled call has yet to end; a call that handed over in the moment of the
        cancel has a successor, which is cancelled in turn."""
        from runner.backends.modal.service import modal_errors

        cancelled = _call_id(run)
        state = self._call_state(run, "cancelling the job")
        if _call_id(run) != cancelled:
            with modal_errors("cancelling the job", _call_id(run)):
                self._service().cancel(_call_id(run))
            return True
        return state.running

    def stop(self, run: Run, state: RunState) -> str:
        super().stop(run, state)
        return (f"cancelled {run.folder.name}; its checkpoint is on Modal's volume: "
                f"`{command(f'gpujob fetch {run.folder}')}` "
                f"downloads the folder, `{command(f'gpujob resume {run.folder}')}` continues it")

    def fetch(self, run: Run) -> str:
        """Download a run that has ended into its local folder."""
        state = self._call_state(run)
        if state.running:
            raise bad_input(f"{run.folder.name} is still running on Modal; "
                            f"`{command(f'gpujob status {run.folder}')}` says when it has ended")
        try:
            self._bring_back(self._service(), run.folder, state, _call_id(run))
        except GpujobError as err:
            if err.exit_code in (BAD_INPUT, MISSING_BACKEND):  # Modal's own trouble is not the job's outcome
                raise
            return f"modal: the job did not finish ({err.message})"
        return f"modal: {run.folder.name} is here"

    def detached_note(self, run: Run) -> str:
        return f"Modal runs it; `{command('gpujob fetch RUN')}` downloads its folder once it has ended"

    def _bring_back(self, service, folder: Path, state, call_id: str | None) -> None:
        from runner.backends.modal.service import modal_errors

        with modal_errors("downloading the run folder", call_id):
            copied = service.download(folder.name, folder)
        print(f"modal: copied {len(copied)} new or changed file(s) from the volume into {folder}", file=sys.stderr)
        _record_cost(folder)
        code = state.exit_code
        if code is None:  # Modal forgot the outcome: the folder tells
            code = 0 if (folder / SUMMARY).exists() else None
        if code == 0:
            return
        if code is None:
            raise job_failed(f"modal: {folder.name} ended without a summary.json; see {folder}")
        raise GpujobError(f"modal: {_said_here(state.message, folder)}; run folder: {folder}", code)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _stopped_detail(run: Run, kind: str, message: str) -> str:
    """A stopped call's line: who cancelled it (the user, a sweep's pruner), then the job's own words
    without their "cancelled: ", then how to continue where those words do not say."""
    from runner.runs.state import cancelled_by

    if kind == CANCELLED:
        message = f"{cancelled_by(run.record)}; {message.removeprefix(f'{CANCELLED}: ')}"
    if "gpujob resume" not in message:
        message += f"; its checkpoint is on Modal's volume: `{command(f'gpujob resume {run.folder}')}` continues it"
    return message


def _said_here(message: str, folder: Path) -> str:
    """The job's message with the run folder's path in the container (VOLUME_MOUNT/NAME, in
    "resume with: gpujob resume ...") replaced by the folder here, the one the user can act on."""
    from runner.backends.modal.app import volume_root

    return message.replace(str(volume_root() / folder.name), str(folder))


def _calls(run: Run) -> list[str]:
    """Every Modal call of the run, in order: each submission's, and each chain's (chain.py)."""
    return list(run.handles.get("modal_calls") or [])


def _continued(run: Run, call_id: str) -> None:
    """The job went on in call `call_id` (past Modal's per-call limit): the record names it, last."""
    if call_id in _calls(run):
        return
    run.record = run_record.update(run.folder, handles={"modal_call_id": call_id, "modal_calls": [*_calls(run), call_id]})
    run.record.note("continued", call=call_id)
    run_record.write(run.folder, run.record)
    print(f"modal: the job continues in call {call_id} (Modal's per-call limit)", file=sys.stderr)


def _call_id(run: Run) -> str:
    call_id = run.handles.get("modal_call_id")
    if not call_id:
        raise bad_input(f"{run.folder}: its record names no Modal call (the submission never started one)")
    return call_id


def hourly_price(spec: JobSpec) -> float | None:
    """Modal's list price per hour for the job's GPUs (None on CPU: not in the catalog)."""
    request = spec.resources.gpu_request
    return None if request is None else request.count * request.type.price_per_hour["modal"]


def load_spec_text(spec_yaml: str) -> JobSpec:
    from runner.spec.load import validate_spec

    return validate_spec(yaml.safe_load(spec_yaml), source="the run's request")


def _billed_as_metered(summary: dict, what: str, price: float) -> dict:
    """The bill as the job's meter counted it (summary.json's usd: from each submission's spawn to
    its end, so the container's start, Modal's retries and earlier submissions are in, the count
    resources.max_usd is held to), plus the scale-down window after the end. A job without a
    meter's figure: its wall time."""
    from runner.reports.cost import estimate

    if summary.get("usd") is None:
        return estimate("modal", what, price, summary["wall_s"],
                        f"Modal's GPU list price read {PRICES_READ_ON} x the job's wall time; Modal also bills "
                        "container start-up, earlier preempted attempts, CPU and memory")
    billed_s = summary["usd"] * 3600 / price + SCALEDOWN_WINDOW_S
    return estimate("modal", what, price, billed_s,
                    f"Modal's GPU list price read {PRICES_READ_ON} x the time from each submission's spawn to its "
                    f"end (start-up, retries and earlier submissions included: what resources.max_usd is held to) "
                    f"plus the {SCALEDOWN_WINDOW_S} s scale-down window; CPU and memory extra")


def _record_cost(folder: Path) -> None:
    """cost.json from Modal's GPU list price and the job's own wall time (in summary.json)."""
    from runner.reports.cost import describe, estimate, write_cost
    from runner.spec.load import load_spec

    from runner.backends.modal.chain import billed_calls

    summary, spec_file = RunPaths(folder).summary, RunPaths(folder).spec
    if not (summary.exists() and spec_file.exists()):
        return
    request = load_spec(spec_file).resources.gpu_request
    if request is None:
        return  # CPU and memory are billed by the second; not estimated here
    price = request.count * request.type.price_per_hour["modal"]
    what = f"{request.count}x {request.type.name}"
    recorded = run_record.read(folder).handles.get("modal_calls") if run_record.is_run(folder) else None
    calls = billed_calls(folder, list(recorded or []))
    if calls:  # a chain past Modal's per-call limit: every call's attempts, summed
        record = {**estimate("modal", what, price, sum(call["billed_s"] for call in calls),
                             f"Modal's GPU list price read {PRICES_READ_ON} x the time of each of the job's "
                             f"{len(calls)} calls (every attempt), summed; Modal also bills container start-up, "
                             "CPU and memory"),
                  "calls": [{**call, "estimated_usd": round(price * call["billed_s"] / 3600, 4)} for call in calls]}
    else:
        record = _billed_as_metered(json.loads(summary.read_text()), what, price)
    write_cost(folder, record)
    print(f"modal: {describe(record)}", file=sys.stderr)



