"""The modal backend: run a job on Modal's GPUs and bring its run folder back.

`plan` turns the spec into a ModalRequest, the exact call that would be made: the GPU in
Modal's syntax (checked against the types Modal offers), the timeout, the retry policy and
the world size, with the image and a cost per hour; `--dry-run` prints it. `run` checks
credentials before anything touches the network, picks the run's name here, starts
runner/backends/modal_app.py's `train_remote` on an ephemeral app (its logs stream to this
terminal) and, when the job ends, copies its folder from the volume into runs/. Each run's
local folder first holds `.modal.json` (call id, app, volume; never a token), which is how
`gpujob status` and `gpujob fetch` find a run started with `--detach`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.backends import Plan
from runner.errors import BAD_INPUT, GpujobError, bad_input, job_failed
from runner.gpus import PRICES_READ_ON
from runner.spec import JobSpec
from runner.stop_signals import INTERRUPTED

RECORD = ".modal.json"
MAX_TIMEOUT_S = 24 * 60 * 60  # Modal's limit for one function call
MAX_GPUS = {"A10G": 4}  # per container, where Modal allows fewer than the catalog's 8
KEY_PINS = ("torch", "torchvision")


@dataclass(frozen=True)
class ModalRequest:
    """One job as Modal will run it: train_remote.with_options(**options).spawn(spec_yaml, NAME)."""

    gpu: str | None  # Modal's syntax, e.g. "A10G:2"; None runs on CPU
    timeout_s: int
    retries: int
    world_size: int
    spec_yaml: str

    def options(self) -> dict:
        from runner.backends.modal_app import retry_policy

        gpu = {"gpu": self.gpu} if self.gpu else {}  # with_options cannot unset a GPU; the base has none
        return {**gpu, "timeout": self.timeout_s, "retries": retry_policy(self.retries)}

    def function(self):
        """The very Modal function that is shipped, configured for this job."""
        from runner.backends.modal_app import train_remote

        return train_remote.with_options(**self.options())

    def call(self, run_name: str) -> str:
        from runner.backends.modal_app import APP_NAME

        gpu = f"gpu={self.gpu!r}, " if self.gpu else ""
        return (f"app {APP_NAME!r}: train_remote.with_options({gpu}timeout={self.timeout_s}, "
                f"retries={self.retries}).spawn(<spec yaml>, {run_name!r})")


def modal_request(spec: JobSpec) -> ModalRequest:
    from runner.backends.modal_app import RETRIES, TIMEOUT_GRACE_S

    if spec.resources.nodes > 1:
        raise bad_input("resources.nodes: backend modal runs a job in one container (up to 8 GPUs); set nodes: 1")
    for field, value in (("model.name", spec.model.name), ("data.dataset", spec.data.dataset)):
        if ":" in value:  # package.module:factory is the user's code, which the image does not hold
            raise bad_input(f"{field}: backend modal ships only gpujob's own code, not {value}; use a built-in "
                            "one here, or --backend docker, which mounts this folder")
    request = spec.resources.gpu_request
    gpu = None
    if request is not None:
        try:
            name = request.on("modal")
        except ValueError as err:
            raise bad_input(f"resources.gpu: {err}") from None
        most = MAX_GPUS.get(request.type.name, 8)
        if request.count > most:
            raise bad_input(f"resources.gpu: Modal attaches at most {most} {name} GPUs to a container")
        gpu = f"{name}:{request.count}"
    timeout_s = spec.resources.timeout_minutes * 60 + TIMEOUT_GRACE_S
    if timeout_s > MAX_TIMEOUT_S:
        raise bad_input(f"resources.timeout_minutes: Modal stops a call after 24 h; at most "
                        f"{(MAX_TIMEOUT_S - TIMEOUT_GRACE_S) // 60} minutes")
    return ModalRequest(gpu, timeout_s, RETRIES, spec.resources.workers_per_node, spec.to_yaml())


def describe_image() -> str:
    from runner.backends.modal_app import LOCAL_SOURCES, PYTHON_VERSION, REQUIREMENTS
    from runner.errors import missing_backend

    if not REQUIREMENTS.is_file():
        raise missing_backend(f"modal: {REQUIREMENTS} is missing; submit from a gpujob checkout")
    pins = dict(line.split(";")[0].strip().split("==", 1) for line in REQUIREMENTS.read_text().splitlines()
                if "==" in line and not line.startswith((" ", "#")))
    key = ", ".join(f"{name} {pins[name]}" for name in KEY_PINS if name in pins)
    return (f"debian_slim + python {PYTHON_VERSION}, {len(pins)} pinned packages from images/requirements.txt "
            f"({key}) installed with uv, plus the local source of: {', '.join(LOCAL_SOURCES)}")


def describe_cost(spec: JobSpec, timeout_s: int) -> str:
    request = spec.resources.gpu_request
    if request is None:
        return "CPU only: Modal bills CPU and memory by the second (not estimated here)"
    per_gpu = request.type.price_per_hour["modal"]
    hourly = per_gpu * request.count
    return (f"${hourly:.2f}/h for {request} (${per_gpu:.2f} per GPU-hour, Modal's list price read {PRICES_READ_ON}; "
            f"CPU and memory extra), at most ${hourly * timeout_s / 3600:.2f} per attempt")


@dataclass
class ModalPlan(Plan):
    request: ModalRequest | None = None


class ModalBackend:
    name = "modal"

    def __init__(self, connect=None):
        self.connect = connect  # tests: a stand-in for ModalService

    def _service(self):
        if self.connect is not None:
            return self.connect()
        from runner.backends.modal_service import ModalService, require_credentials

        require_credentials()  # before anything touches the network
        return ModalService()

    def plan(self, spec: JobSpec, spec_path: Path, runs_dir: Path) -> ModalPlan:
        from runner.backends.modal_service import NO_CREDENTIALS, credentials_source, import_modal

        import_modal()  # first: the App is built with Modal's client
        from runner.backends.modal_app import VOLUME_MOUNT, VOLUME_NAME

        request = modal_request(spec)
        request.function()  # the call must be constructible before anything is paid for
        source = credentials_source()
        run_name = f"{spec.name}-DATE-TIME"
        details = {"modal gpu": request.gpu or "none (cpu)", "image": describe_image(),
                   "timeout": f"{request.timeout_s} s per attempt ({spec.resources.timeout_minutes} min job "
                              f"+ {request.timeout_s // 60 - spec.resources.timeout_minutes} min start-up and save)",
                   "retries": f"{request.retries}; a restarted attempt resumes from the last checkpoint",
                   "volume": f"{VOLUME_NAME} at {VOLUME_MOUNT}; the run folder is {VOLUME_MOUNT}/{run_name}",
                   "call": request.call(run_name),
                   "cost": describe_cost(spec, request.timeout_s),
                   "credentials": f"from {source}" if source else NO_CREDENTIALS.removeprefix("modal: ")}
        return ModalPlan(self.name, spec, spec_path, runs_dir, world_size=request.world_size, details=details,
                         request=request)

    def run(self, plan: ModalPlan) -> Path:
        return self._submit(plan, detach=False)

    def detach(self, plan: ModalPlan) -> list[str]:
        """Start the job and leave it running; the lines to show, the run folder last."""
        folder = self._submit(plan, detach=True)
        record = read_record(folder)
        return [f"submitted {folder.name} to Modal (call {record['call_id']}); it runs without this terminal",
                f"follow it:   gpujob status {folder}", f"download it: gpujob fetch {folder}", str(folder)]

    def _submit(self, plan: ModalPlan, detach: bool) -> Path:
        from runner.backends.modal_service import modal_errors

        service = self._service()
        with modal_errors("looking up the volume"):
            folder = new_run_folder(plan.runs_dir, plan.spec.name, service.run_names())

        def spawned(call_id: str) -> None:
            write_record(folder, call_id, plan.request, detach)
            print(f"modal: started {folder.name} (call {call_id})", file=sys.stderr)

        try:
            with modal_errors("running the job"):
                state = service.start(plan.request, folder.name, detach, spawned)
        except BaseException as err:
            started = (folder / RECORD).exists()
            if not started:
                folder.rmdir()  # nothing was started: leave no empty folder behind
            if isinstance(err, KeyboardInterrupt):
                what = (f"the remote job was stopped; download what it wrote with: gpujob fetch {folder}"
                        if started else "nothing was started")
                raise GpujobError(f"modal: interrupted; {what}", INTERRUPTED) from None
            raise
        if detach:
            return folder
        return self._bring_back(service, folder, state)

    def status(self, folder: Path):
        from runner.backends.modal_service import modal_errors

        record = read_record(folder)
        service = self._service()
        with modal_errors("asking Modal about the job"):
            return service.poll(record["call_id"])

    def fetch(self, folder: Path) -> Path:
        """Download a run that has ended into its local folder."""
        state = self.status(folder)
        if state.running:
            raise GpujobError(f"{folder.name} is still running on Modal; `gpujob status {folder}` says when it "
                              "has ended", BAD_INPUT)
        return self._bring_back(self._service(), folder, state)

    def _bring_back(self, service, folder: Path, state) -> Path:
        from runner.backends.modal_service import modal_errors

        with modal_errors("downloading the run folder"):
            copied = service.download(folder.name, folder)
        print(f"modal: copied {len(copied)} file(s) from the volume into {folder}", file=sys.stderr)
        _record_cost(folder)
        code = state.exit_code
        if code is None:  # Modal forgot the outcome: the folder tells
            code = 0 if (folder / "summary.json").exists() else None
        if code == 0:
            return folder
        if code is None:
            raise job_failed(f"modal: {folder.name} ended without a summary.json; see {folder}")
        raise GpujobError(f"modal: {state.message}; run folder: {folder}", code)


def _record_cost(folder: Path) -> None:
    """cost.json from Modal's GPU list price and the job's own wall time (in summary.json)."""
    from runner.cost import describe, estimate, write_cost
    from runner.spec import load_spec

    summary, spec_file = folder / "summary.json", folder / "spec.yaml"
    if not (summary.exists() and spec_file.exists()):
        return
    request = load_spec(spec_file).resources.gpu_request
    if request is None:
        return  # CPU and memory are billed by the second; not estimated here
    record = estimate("modal", f"{request.count}x {request.type.name}",
                      request.count * request.type.price_per_hour["modal"],
                      json.loads(summary.read_text())["wall_s"],
                      f"Modal's GPU list price read {PRICES_READ_ON} x the job's wall time in its last attempt; "
                      "Modal also bills container start-up, earlier preempted attempts, CPU and memory")
    write_cost(folder, record)
    print(f"modal: {describe(record)}", file=sys.stderr)


def new_run_folder(runs_dir: Path, name: str, taken: set[str]) -> Path:
    """A new local run folder (NAME-YYYYmmdd-HHMMSS[-N], as a local run's) whose name is
    not on the volume yet either."""
    from runner.run_folder import RunFolder

    skipped = []
    try:
        while True:
            folder = RunFolder.create(runs_dir, name).path
            if folder.name not in taken:
                return folder
            skipped.append(folder)
    finally:
        for path in skipped:
            path.rmdir()


def write_record(folder: Path, call_id: str, request: ModalRequest, detached: bool) -> None:
    from runner.backends.modal_app import APP_NAME, VOLUME_NAME
    from runner.run_folder import RunFolder

    record = {"backend": "modal", "app": APP_NAME, "function": "train_remote", "call_id": call_id,
              "volume": VOLUME_NAME, "volume_path": f"/{folder.name}", "gpu": request.gpu,
              "world_size": request.world_size, "detached": detached,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RunFolder(folder).write_json(RECORD, record)


def read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise bad_input(f"{folder}: no {RECORD}; not a run submitted with --backend modal") from None
    except json.JSONDecodeError as err:
        raise bad_input(f"{folder / RECORD}: not valid JSON ({err})") from None


def find_run(run: str, runs_dir: Path) -> Path:
    """A run given as its folder or as its name under runs_dir."""
    for candidate in (Path(run), Path(runs_dir) / run):
        if candidate.is_dir():
            return candidate
    raise bad_input(f"{run}: no such run folder (nor {Path(runs_dir) / run})")


BACKEND = ModalBackend()
