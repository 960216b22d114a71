"""A run's vast.ai instance as it stands now, for status, cancel, fetch and resume: found by the
record (or by its label, for a rent cut off before its id was recorded), its state read from
vast.ai and the log's exit line, stopped so that the job checkpoints, and brought back and
destroyed. An instance destroyed outside gpujob is said to be gone, and nothing is asked of it.
"""

from __future__ import annotations

from typing import Callable

from runner.backends.vast.copying import salvage
from runner.backends.vast.following import NOT_STARTED, Watch, exit_code, kept_log, own_lines
from runner.backends.vast.patience import PatientApi
from runner.backends.vast.rental import Rental, close_rental, record
from runner.runs.state import FINISHED, PENDING, RUNNING, Run, RunState, ended_state
from runner.invocation import command

CANCEL_WAIT_S = 120  # cancel: time for the job to checkpoint after the instance is told to stop
CANCEL_POLL_S = 5.0  # at most this long between looks at its log meanwhile


def find(run: Run, connect: Callable[[], PatientApi]) -> int | None:
    """The run's instance, while it may still exist: the recorded id or, for a rent cut off
    before its id was recorded (gpujob killed in between), the one listed with the run's label.
    vast.ai is asked (`connect`) only for the latter."""
    handles = run.handles
    if handles.get("destroyed") or handles.get("vast_released"):  # released: its sweep's instance went on to another trial
        return None
    if handles.get("vast_instance_id") is not None or not handles.get("vast_label"):
        return handles.get("vast_instance_id")
    made = connect().instances_labelled(handles["vast_label"])
    return min(made) if made else None


def state(api: PatientApi | None, run: Run, instance_id: int | None) -> RunState:
    """Where the run stands, from its instance's state and the log's exit line (no API is
    needed, nor given, when no instance is recorded)."""
    if instance_id is None:
        return ended_state(run, exit_code(kept_log(run.folder)), "its instance is gone")
    assert api is not None, "an instance is looked up on vast.ai"
    info = api.show_instance(instance_id) or {}
    status = info.get("actual_status")
    if not info:
        return ended_state(run, None, f"instance {instance_id} is gone (destroyed outside gpujob)")
    lines = run_lines(api, run, instance_id) if status not in (None, "loading", "created") else []
    code = exit_code(lines)
    if status in NOT_STARTED and code is None:
        return RunState(PENDING, f"instance {instance_id} is {status or 'being set up'}")
    if status == "running" and code is None:
        return RunState(RUNNING, f"on instance {instance_id}; it bills until the job ends")
    fetch = f"`{command(f'gpujob fetch {run.folder}')}` copies the folder back and destroys the instance"
    if code == 0:
        return RunState(FINISHED, f"on instance {instance_id}, which bills storage until {fetch}", 0)
    if code is None and run.handles.get("interruptible"):
        return RunState(PENDING, f"instance {instance_id} is {status} (outbid?); it resumes when it runs again")
    ended = ended_state(run, code, f"instance {instance_id} is {status}")
    ended.detail += f"; {fetch}"
    return ended


def run_lines(api: PatientApi, run: Run, instance_id: int) -> list[str]:
    """The instance's output that is the run's: all of it, but on a sweep's instance, which runs
    several in turn (pool.py), the run's own part."""
    lines = api.logs(instance_id).splitlines()
    return own_lines(lines, run.folder.name) if run.handles.get("vast_pooled") else lines


def gone(api: PatientApi, run: Run, instance_id: int) -> str | None:
    """Whether vast.ai no longer has the instance (destroyed outside gpujob): then there is
    nothing to stop, copy or destroy, and nothing is billed. Recorded, and said in a line."""
    if api.show_instance(instance_id):
        return None
    record(run, destroyed=True)
    return (f"instance {instance_id} is gone (destroyed outside gpujob), so nothing was copied back and "
            f"nothing is billed; {run.folder} holds what was copied before")


def stop(api: PatientApi, run: Run, instance_id: int, seen: RunState, poll_s: float) -> None:
    """Stop a running job so that it checkpoints (the container gets SIGTERM), wait for its exit
    line, then bring the folder back and destroy the instance."""
    if seen.state == RUNNING:
        api.stop_instance(instance_id)
        deadline = api.clock() + CANCEL_WAIT_S
        while exit_code(run_lines(api, run, instance_id)) is None and api.clock() < deadline:
            api.sleep(min(poll_s, CANCEL_POLL_S))
    bring_back_and_destroy(api, run, instance_id)


def bring_back_and_destroy(api: PatientApi, run: Run, instance_id: int) -> None:
    """Copy what the instance's disk holds back here, then destroy it and keep its log and cost."""
    # One found by its label may have others beside it (a rent whose answer was lost): those go too.
    found = run.handles.get("vast_instance_id") != instance_id
    rental = Rental(run.handles["vast_label"], instance_id=instance_id, asked=True, uncertain=found)
    if found:
        record(run, vast_instance_id=instance_id)
    watch = Watch(lines=run_lines(api, run, instance_id), started=True)
    salvage(api, instance_id, run.folder)
    close_rental(api, run, rental, must=True, watch=watch)
