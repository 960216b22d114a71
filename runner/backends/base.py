"""What every backend is: a Plan (the exact request, printable and testable: `--dry-run` shows it),
the lifecycle the commands use, and what the core may ask a backend instead of comparing its
name: whether it rents machines, whether its run folder is here, whether it can run a GPU
request and why not, where its job runs (for the dry run), and what to say of a detached run."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Protocol

from runner.errors import GpujobError, bad_input
from runner.invocation import command
from runner.runs import record as run_record
from runner.runs.files import atomic_write
from runner.runs.paths import JOB, JOB_REQUEST, RunPaths
from runner.runs.state import Run, RunState, resume_hint

if TYPE_CHECKING:
    from runner.gpus import GpuType
    from runner.spec.model import JobSpec
    from runner.usercode.shipping import UserCode


@dataclass
class Plan:
    backend: str
    spec: "JobSpec"
    spec_path: Path
    runs_dir: Path
    run_name: str
    world_size: int
    request: "Request"  # the backend's exact request: what submit sends, nothing rebuilt
    rows: list[tuple[str, str]] = field(default_factory=list)  # the request, as --dry-run prints it
    notes: list[str] = field(default_factory=list)  # said before the job starts
    code: "UserCode | None" = None  # the user's code the job needs (runner/usercode/shipping.py)
    ships_code: bool = False  # the backend sends that code with the job (a copy in job/code)
    job_spec: "JobSpec | None" = None  # the spec as the job reads it, where it differs (a container's paths)

    @property
    def folder(self) -> Path:
        return self.runs_dir / self.run_name

    def describe(self) -> list[tuple[str, str]]:
        gpu = self.spec.resources.gpu or "none (cpu)"
        rows = [("backend", self.backend), ("gpu", gpu), ("world size", str(self.world_size)),
                ("run folder", str(self.folder))]
        if self.code is not None:
            how = ("shipped with the job (copied into job/code)" if self.ships_code
                   else "imported where it is (this machine)")
            rows.append(("your code", f"{self.code.describe()}; {how}"))
        return rows + self.rows + [("note", note) for note in self.notes]


class Request(Protocol):
    """A backend's exact request: kept in job/request.json as sent, and sent again by `resume`."""

    def to_json(self) -> dict: ...

    @classmethod
    def from_json(cls, data: dict) -> "Request": ...


@dataclass(frozen=True)
class Target:
    """Where a job will run, as far as its memory and precision go (what the dry run checks)."""

    device: str  # cuda | mps | cpu
    gpu: "GpuType | None"  # the catalog's card, where known
    capacity: int | None  # bytes one node has for the job's workers (None: unknown)
    where: str  # for messages: "this machine", "an A10G (24 GB) on modal"
    here: bool = False  # this very machine: the dry run's timed steps stand for the job's own


def what_is_here(request, gpus_here: list[tuple[str, float]]) -> str:
    """This machine's GPUs, as they bear on `request`: "no CUDA GPU", "1 A10G", "an L4, not A10G"."""
    matching = [name for name, memory in gpus_here if request.type.is_device(name, memory)]
    if matching:
        return f"{len(matching)} {request.type.name}"
    return "no CUDA GPU" if not gpus_here else f"{gpus_here[0][0]}, not {request.type.name}"


STOP_POLL_S = 0.2


def stop_grace_s(folder: Path) -> int:
    """train.stop_grace_s of the run: the spec it was sent (job/spec.yaml), else the one it wrote,
    else the field's default (neither can be read)."""
    from runner.spec.load import load_spec
    from runner.spec.model import TrainSpec

    paths = RunPaths(folder)
    for spec in (paths.job_spec, paths.spec):
        if spec.is_file():
            try:
                return load_spec(spec).train.stop_grace_s
            except GpujobError:
                continue
    return TrainSpec.model_fields["stop_grace_s"].default


def catalog_target(spec: "JobSpec", backend: str) -> Target:
    """A machine gpujob does not see, sized from the GPU catalog (a rented or a cluster's card)."""
    request = spec.resources.gpu_request
    if request is None:
        return Target("cpu", None, None, f"a {backend} CPU machine")
    gpu = request.type
    return Target("cuda", gpu, int(gpu.memory_gb * 1e9), f"{gpu.name} ({gpu.memory_gb} GB) on {backend}")


class Backend:
    """The interface every backend fills in, with what the core may ask it.

        plan(spec, spec_path, runs_dir, run_name) -> Plan  # pure: the exact request; --dry-run prints it
        submit(plan, run, detach)     # sends plan.request, records its handles; attached, follows it to the end
        status(run) -> RunState       # pending | running | finished | failed | cancelled | preempted
        logs(run, follow) -> lines    # the job's output so far (and as it comes, with follow)
        cancel(run) -> str            # stop it, letting it checkpoint first where the backend can
        fetch(run) -> str             # bring the run folder here
        resume(run, detach)           # submit it again: it continues from its last checkpoint

    submit, resume and cancel are written here once; a backend fills in `send` and either `stop`
    or the steps of the stop written here (`ask_to_stop`, and where needed `still_running`,
    `end_now`, `cannot_stop`).
    """

    name: ClassVar[str]
    folder_is_here: ClassVar[bool] = False  # the job writes its run folder on this machine (or a shared disk)
    ships_code: ClassVar[bool] = True  # the job runs in another Python: the user's code goes with it
    rents: ClassVar[bool] = False  # it rents machines: an estimate before the job, cost.json after
    resumes_here: ClassVar[bool] = False  # `resume` continues the run in this process (the local backend)
    status_needs_no_service: ClassVar[bool] = False  # its status reads this folder alone (`gpujob runs` asks it)
    takes_machine_gpus: ClassVar[bool] = False  # `--gpu all` or a count: this machine's GPUs, handed to the job
    fans_out: ClassVar[bool] = False  # a sweep's trials go out by its own mechanism (fan_out: a SLURM array)

    request_type: ClassVar[type["Request"]]  # the class of its plans' requests
    stop_slack_s: ClassVar[float] = 30  # a stop: past train.stop_grace_s, the backend's own time to end the job

    def plan(self, spec: "JobSpec", spec_path: Path, runs_dir: Path, run_name: str) -> Plan:
        raise NotImplementedError

    def check_costless(self, spec: "JobSpec", sending: bool) -> None:
        """Raise (exit 2 or 3) for what can be known at no cost, before anything that costs time or
        money (importing torch, timed steps, an estimate, the network): in this order, the SDK
        installed, the spec valid for this backend, the credentials (where `sending`, or where
        the plan needs them). Nothing to check by default."""

    def status(self, run: Run) -> RunState:
        raise NotImplementedError

    def logs(self, run: Run, follow: bool) -> Iterator[str]:
        raise NotImplementedError

    def fetch(self, run: Run) -> str:
        return f"{run.folder.name} ran where its folder is written here: the folder is already here"

    def epochs_so_far(self, run: Run) -> list[dict]:
        """The epoch records a live job has closed so far, as this machine can see them while it
        runs (a sweep's pruner judges them): its metrics.jsonl where its folder is written here,
        else the epoch lines of its output, to their printed precision."""
        from runner.runs.lines import epoch_from_line
        from runner.runs.reading import metrics_records

        if self.folder_is_here:
            return [r for r in metrics_records(RunPaths(run.folder).metrics) if r.get("kind") == "epoch"]
        return [r for r in map(epoch_from_line, self.logs(run, False)) if r is not None]

    # ---- the chores every backend shares, around what each does its own way ----------------------

    def submit(self, plan: Plan, run: Run, detach: bool) -> None:
        """Keep what is sent in the run's job/ (the spec as the job reads it, the request exactly
        as sent), then send it."""
        for note in plan.notes:
            print(f"gpujob: {note}", file=sys.stderr)
        paths = RunPaths(run.folder)
        paths.job.mkdir(exist_ok=True)
        atomic_write(paths.job_spec, (plan.job_spec or plan.spec).to_yaml().encode())
        atomic_write(paths.job_request, (json.dumps(plan.request.to_json(), indent=2) + "\n").encode())
        self.send(run, plan.request, detach)

    def resume(self, run: Run, detach: bool) -> None:
        """Send the recorded request again (its job continues from the run's last checkpoint)."""
        self.send(run, self.refreshed(run, self.recorded_request(run)), detach)

    def cancel(self, run: Run) -> str:
        """Stop a live run, letting it checkpoint first where the backend can; safe to repeat."""
        state = self.status(run)
        if not state.live:
            return f"{run.folder.name} is not running ({state.describe()}); nothing to cancel"
        refusal = self.cannot_stop(run, state)
        if refusal:
            raise bad_input(refusal)  # before the record changes: a refused cancel changes nothing
        run.record.note("cancel asked")
        run_record.write(run.folder, run.record)
        said = self.stop(run, state)
        return said or f"cancelled {run.folder.name}; {resume_hint(run.folder)}"

    def recorded_request(self, run: Run):
        """The request the run was sent, as job/request.json keeps it."""
        path = RunPaths(run.folder).job_request
        try:
            return self.request_type.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise bad_input(f"{run.folder}: what was sent to start it ({JOB}/{JOB_REQUEST}) is unreadable ({err}); "
                            f"resume it here with: {command(f'gpujob resume {run.folder} --here')}") from None

    def resume_with(self, run: Run, workers: int, detach: bool) -> None:
        """Continue the run in this process with `workers` workers, whichever backend ran it
        before (`resume --here`): only a backend that `resumes_here` can."""
        raise NotImplementedError(f"backend {self.name} does not run jobs in this process")

    def refreshed(self, run: Run, request):
        """The recorded request as it can be sent again now (e.g. a new offer where the old one is
        gone); by default, as it was."""
        return request

    def send(self, run: Run, request, detach: bool) -> None:
        """Start the job the request describes and record its handles; attached, follow it to its end."""
        raise NotImplementedError

    def stop(self, run: Run, state: RunState) -> str | None:
        """Ask the live job to stop, give it train.stop_grace_s to checkpoint and the backend's
        stop_slack_s to end, and end it at once if it is still there. Returns what to say
        instead of the usual line, if anything."""
        grace_s = stop_grace_s(run.folder)
        self.ask_to_stop(run, state, grace_s)
        started = time.monotonic()
        while self.still_running(run):
            waited_s = time.monotonic() - started
            if waited_s > grace_s + self.stop_slack_s:
                return self.end_now(run, state, waited_s)
            time.sleep(STOP_POLL_S)
        return None

    def cannot_stop(self, run: Run, state: RunState) -> str | None:
        """Why this machine cannot stop the live job (one line), or None: it can."""
        return None

    def ask_to_stop(self, run: Run, state: RunState, grace_s: int) -> None:
        """Tell the live job to stop: it checkpoints within grace_s, then exits."""
        raise NotImplementedError

    def still_running(self, run: Run) -> bool:
        """Whether a job asked to stop has yet to end."""
        return self.status(run).live

    def end_now(self, run: Run, state: RunState, waited_s: float) -> str | None:
        """End a job still there after its grace, and say so (None: the usual line)."""
        return None

    # ---- what the core asks instead of comparing names -----------------------------------------

    def takes(self, spec: "JobSpec", gpus_here: list[tuple[str, float]]) -> str | None:
        """For `backend: auto`: why this backend would run the job (one line), or None."""
        return None

    def auto_hint(self, spec: "JobSpec") -> str | None:
        """For `backend: auto` when no backend takes the job: what would let this one (or None)."""
        return None

    def target(self, plan: Plan) -> Target:
        """Where the job will run: the dry run checks its precision and memory against it."""
        return catalog_target(plan.spec, self.name)

    def code_python(self, spec: "JobSpec") -> str | None:
        """The Python that will import the shipped code, where it can be run from here (None: this one)."""
        return None

    def detached_note(self, run: Run) -> str:
        """What to know of a detached run besides following, checking and stopping it."""
        return ""

    def kept_elsewhere(self, run: Run) -> str | None:
        """What the run still holds at a service that only its folder here leads to (a rented
        machine that bills until gpujob destroys it), as one line; None when nothing. Read from
        the run's record: asks no service."""
        return None

    def readiness(self) -> str | None:
        """For `gpujob check`: what this machine lacks to use the backend now (its SDK, credentials,
        engine, image, client commands), as one line with what to do; None when nothing is missing.
        Free to ask: no network, no torch, nothing that takes more than a moment."""
        return None

    # ---- a sweep's trials, fanned out by the backend's own mechanism (runner/sweeps) -----------

    def fan_out(self, spec: "JobSpec", sweep_dir: Path, trials: int, parallel: int) -> dict:
        """Where `fans_out`: start workers of `gpujob sweep work SWEEP_DIR` for `trials` trials, at
        most `parallel` at once; returns the handles to keep in sweep.json. Other backends' trials
        are submitted one by one from this machine, or (local) trained in this process."""
        raise NotImplementedError(f"backend {self.name} has no fan-out of its own (fans_out is False): this "
                                  "machine submits its trials one by one (runner/sweeps/remote.py)")

    @contextmanager
    def sweep_machines(self, parallel: int, trials: list[Run]) -> Iterator[None]:
        """While this machine submits a sweep's trials one by one (runner/sweeps/remote.py): a
        backend that rents machines may keep up to `parallel` of them and run the trials on them
        in turn (one rental, one image pull each), giving every one up when the block ends,
        however it ends; `trials`, the sweep's runs so far, name the machines an earlier driver
        kept and could not give up (it was killed). By default each trial is a submission of its own."""
        yield

    def fanned_out_live(self, handles: dict) -> str | None:
        """While a sweep's workers run (or wait to): one line saying so; None once they all ended."""
        return None

    def stop_fan_out(self, handles: dict) -> None:
        """Stop a sweep's workers: none starts again, and running ones checkpoint their trials."""
