"""A sweep's instances: at most max_parallel rented, each running trials in turn (one rental, one
image pull). A trial goes to an idle instance when there is one: its spec, its meter's variables
and the user's code are sent to $JOB/queue/NAME and then its mark, and vast-start.sh (in its pool
mode, GPUJOB_VAST_POOL=1) runs it once the previous trial's folder has been copied back. Else it
rents a new instance, as a lone run does, told to wait for more. When the sweep's driver is done
with them (every trial ended, a cancel, the budget, Ctrl-C, an error) every instance is destroyed.

Each trial stays an ordinary run: its record names the instance while it runs there, and once its
folder is back its instance is released to the pool (`vast_released`): `status`, `show` and
`resume` read the folder as for any ended run. A trial the sweep cancels (the pruner, a cancel, the
budget) is stopped alone (a stop mark its job's watcher in vast-start.sh acts on) and released, its
instance kept for the next trial; only if it does not stop in time is the instance stopped and
destroyed with it, the way a lone run's is.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from runner.backends.vast.copying import REMOTE_JOB, UPLOAD_SKIPS, UPLOADED, copy_back, remote_run
from runner.backends.vast.following import Watch, keep_log
from runner.backends.vast.instance import bring_back_and_destroy, run_lines
from runner.backends.vast.patience import PatientApi
from runner.backends.vast.rental import destroy, record, record_cost
from runner.runs.paths import RunPaths
from runner.runs.state import Run
from runner.usercode.shipping import CODE_DIR

POOL_ENV = "GPUJOB_VAST_POOL"  # vast-start.sh runs the jobs sent to $JOB/queue after its first
QUEUE = f"{REMOTE_JOB}/queue"
STOP = ".gpujob-stop"  # in queue/NAME: vast-start.sh stops that job (it checkpoints), and takes the next


@dataclass
class Machine:
    """One of the sweep's instances, and the trial it runs now (None: idle)."""

    instance_id: int
    handles: dict  # what a trial's record says of the rental: label, offer, price, interruptible
    running: Run | None = None
    last: Run | None = None  # the trial it ran last, whose record says whether it is destroyed


@dataclass
class Pool:
    size: int
    machines: list[Machine] = field(default_factory=list)

    def idle(self) -> Machine | None:
        return next((m for m in self.machines if m.running is None), None)

    def take_idle(self, api: PatientApi) -> Machine | None:
        """An idle instance that still runs vast-start.sh, waiting for a trial; one that does not
        (its container ended, or it was destroyed outside gpujob) is destroyed and left out."""
        while (machine := self.idle()) is not None:
            status = (api.show_instance(machine.instance_id) or {}).get("actual_status")
            if status == "running":
                return machine
            print(f"vast: the sweep's instance {machine.instance_id} is {status or 'gone'}; destroying it, and "
                  "the next trial goes to another", file=sys.stderr)
            self.forget(machine.instance_id)
            if status is not None:
                destroy(api, machine.instance_id, must=False)
        return None

    def holding(self, instance_id: int | None) -> Machine | None:
        return next((m for m in self.machines if m.instance_id == instance_id), None)

    def rented(self, run: Run) -> None:
        """A trial that rented a new instance: the instance joins the pool, running it."""
        self.machines.append(Machine(run.handles["vast_instance_id"], _rental(run), run))

    def take_back(self, trials: list[Run]) -> None:
        """The instances an earlier driver of the sweep left idle (killed with kill -9, it could
        not destroy them): each one's latest trial was copied back from it, and it was never
        destroyed. They join the pool idle; take_idle destroys any whose container has ended,
        and the block's end destroys the rest: nothing a killed driver rented is left billing."""
        latest: dict[int, Run] = {}  # each instance's latest trial (trials come in the sweep's order)
        for run in sorted(trials, key=lambda r: r.handles.get("rented_at") or 0.0):
            if run.handles.get("vast_instance_id") is not None:
                latest[run.handles["vast_instance_id"]] = run
        for instance_id, run in latest.items():
            if run.handles.get("vast_released") and not run.handles.get("destroyed"):
                self.machines.append(Machine(instance_id, _rental(run), last=run))

    def forget(self, instance_id: int | None) -> None:
        """An instance stopped and destroyed with its trial (a cancel): no longer the pool's."""
        self.machines = [m for m in self.machines if m.instance_id != instance_id]


def _rental(run: Run) -> dict:
    """What a trial's record says of its instance's rental, which the next trial on it records too."""
    return {key: run.handles.get(key) for key in ("vast_label", "price_per_hour", "interruptible", "offer")}


def hand_over(api: PatientApi, machine: Machine, run: Run, billing: dict[str, str], whole: bool) -> None:
    """Run the trial on an idle instance of the pool: its record names the instance, then its
    job is sent (`whole`, a resumed trial: its run folder with its checkpoint first), the mark
    last (vast-start.sh starts it once the mark is there, with --resume)."""
    record(run, **machine.handles, vast_instance_id=machine.instance_id, destroyed=False, vast_released=False,
           vast_pooled=True, rented_at=api.clock())
    machine.running = run
    queued = f"{QUEUE}/{run.folder.name}"
    if whole:
        api.copy_to(machine.instance_id, run.folder, remote_run(run.folder), exclude=UPLOAD_SKIPS)
    with tempfile.TemporaryDirectory(prefix="gpujob-queue-") as scratch:
        # One folder, as rsync makes it (the last part of the path only: vast-start.sh made queue/), then the mark.
        entry = _queue_entry(Path(scratch) / run.folder.name, run, billing)
        api.copy_to(machine.instance_id, entry, queued)
        mark = Path(scratch) / UPLOADED
        mark.touch()
        api.copy_to(machine.instance_id, mark, f"{queued}/{UPLOADED}")
    print(f"vast: {run.folder.name} goes to instance {machine.instance_id}, which ran the sweep's trial before it",
          file=sys.stderr)


def _queue_entry(entry: Path, run: Run, billing: dict[str, str]) -> Path:
    """The trial's job as vast-start.sh reads it from $JOB/queue/NAME: spec.yaml, env.sh, code/."""
    paths = RunPaths(run.folder)
    entry.mkdir()
    shutil.copyfile(paths.job_spec, entry / "spec.yaml")
    (entry / "env.sh").write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in billing.items()))
    if paths.job_code.is_dir():
        shutil.copytree(paths.job_code, entry / CODE_DIR)
    return entry


def release(api: PatientApi, machine: Machine, run: Run) -> str:
    """A trial that ended on a pool's instance: its folder copied back, its part of the output and
    its cost kept in it, and the instance idle for the next trial."""
    lines = run_lines(api, run, machine.instance_id)
    copy_back(api, machine.instance_id, run.folder)
    keep_log(run.folder, Watch(lines=lines, started=True))
    record_cost(api, run, machine.instance_id)
    record(run, vast_released=True)
    machine.running, machine.last = None, run
    return f"copied {run.folder.name} back; instance {machine.instance_id} takes the sweep's next trial"


def stop_trial(api: PatientApi, machine: Machine, run: Run, poll_s: float) -> bool:
    """Stop the trial alone (the pruner's cancel): its stop mark sent, vast-start.sh stops the job,
    which checkpoints; once its exit mark shows, it is released like an ended trial and the
    instance takes the next one. False when no exit mark came in time (the caller stops the
    instance instead)."""
    from runner.backends.vast.following import exit_code
    from runner.backends.vast.instance import CANCEL_POLL_S, CANCEL_WAIT_S

    with tempfile.TemporaryDirectory(prefix="gpujob-stop-") as scratch:
        entry = Path(scratch) / run.folder.name
        entry.mkdir()
        (entry / STOP).touch()
        api.copy_to(machine.instance_id, entry, f"{QUEUE}/{run.folder.name}")
    deadline = api.clock() + CANCEL_WAIT_S
    while exit_code(run_lines(api, run, machine.instance_id)) is None:
        if api.clock() > deadline:
            return False
        api.sleep(min(poll_s, CANCEL_POLL_S))
    release(api, machine, run)
    return True


def close(api: PatientApi, pool: Pool) -> None:
    """The sweep's driver is done: every instance destroyed; a trial still on one (the driver
    stopped by an error) is copied back first."""
    for machine in pool.machines:
        if machine.running is not None:
            bring_back_and_destroy(api, machine.running, machine.instance_id)
        elif destroy(api, machine.instance_id, must=False) and machine.last is not None:
            record(machine.last, destroyed=True)  # a later driver of the sweep does not take it back
    pool.machines = []
