"""Renting a vast.ai instance for a run and ending the rental, so that nothing is left billing
that the run folder does not name.

The run record names the rental before vast.ai is asked (the label, `gpujob RUN`, which the
instance carries) and its id the moment vast.ai gives it; Ctrl-C is held across each rent and
its record. A rent is sent once: one whose answer was lost may still have made the instance, so
the instances with the run's label are listed before it is asked again, and once one is recorded
every other instance with the label is destroyed. The end of the rental works from what this
process knows (`Rental`), never from a record that may not have been written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from tenacity import RetryCallState, retry_if_result

from runner.runs import record as run_record
from runner.runs.state import Run
from runner.backends.interrupts import held_interrupts
from runner.backends.vast.api import CALL_TIMEOUT_S, VastUnavailable
from runner.backends.vast.following import Watch, keep_log
from runner.backends.vast.patience import PatientApi, patiently
from runner.errors import GpujobError, bad_input, job_failed
from runner.errors import INTERRUPTED

DESTROY_OUTAGE_S = 300.0  # destroying is what stops the billing: worth minutes of patience


@dataclass
class Rental:
    """One rent for a run, as this process knows it."""

    label: str  # the instance's label, `gpujob RUN`: how vast.ai finds it without its id
    before: dict = field(default_factory=dict)  # the record's handles before: put back when nothing was rented
    instance_id: int | None = None  # the moment vast.ai gives it
    asked: bool = False  # a rent was sent
    uncertain: bool = False  # a rent failed without saying that nothing was made: look by the label


def record(run: Run, **handles) -> None:
    """Write `handles` into the run record. What the record should say is kept in memory first,
    whatever becomes of the write."""
    run.record.handles.update(handles)
    try:
        run.record = run_record.update(run.folder, handles=handles)
    except OSError as err:
        raise bad_input(f"{run.folder / run_record.RECORD}: {err.strerror or err}; gpujob must be able to write "
                        "its run folder") from None


def rent(api: PatientApi, run: Run, rental: Rental, offer_id: int, payload: dict, handles: dict) -> int:
    """Rent the offer; the instance's id, recorded. `handles` go into the record first, with the
    label, before anything is asked. A rent whose answer was lost is asked again (with backoff,
    within the API's patience) only while no instance with the run's label is listed."""
    # vast_released: a sweep's trial copied back from the sweep's instance (pool.py); a new rent is its own again
    record(run, vast_label=rental.label, vast_instance_id=None, destroyed=False, vast_released=False, **handles)
    asking = patiently(api.clock, api.sleep, api.outage_s, api.clock(), retry_if_result(lambda lost: lost is not None),
                       _say_asking_again, _give_up_renting)
    asking(_ask_and_look, api, run, rental, offer_id, payload)
    if rental.uncertain:
        _keep_only_the_recorded(api, rental)
    assert rental.instance_id is not None, "the rent returns only once an instance is recorded (or raises)"
    return rental.instance_id


def _ask_and_look(api: PatientApi, run: Run, rental: Rental, offer_id: int, payload: dict) -> VastUnavailable | None:
    """One rent: None once an instance is recorded; the failure when vast.ai's answer was lost
    and no instance with the run's label is listed (worth asking again)."""
    lost = _ask_once(api, run, rental, offer_id, payload)
    if lost is None:
        return None
    made = api.instances_labelled(rental.label)
    if not made:
        return lost
    with held_interrupts(_say_held) as held:  # the lost answer's instance: kept, and no second one asked for
        rental.instance_id = min(made)
        record(run, vast_instance_id=rental.instance_id)
    if held.interrupted:
        raise KeyboardInterrupt
    return None


def _say_asking_again(state: RetryCallState) -> None:
    print(f"gpujob: warning: {_lost(state).message}; no instance with this run's label is listed; trying "
          f"again in {state.upcoming_sleep:.0f} s", file=sys.stderr)


def _give_up_renting(state: RetryCallState):
    raise _lost(state)


def _lost(state: RetryCallState) -> VastUnavailable:
    """The last rent's lost answer: tenacity calls back only on one it asks again for."""
    lost = state.outcome.result() if state.outcome is not None else None
    assert isinstance(lost, VastUnavailable), f"asked again after {lost!r}, which is not a lost answer"
    return lost


def _ask_once(api: PatientApi, run: Run, rental: Rental, offer_id: int, payload: dict) -> VastUnavailable | None:
    """One rent, and its id recorded, with Ctrl-C held across both; the failure when vast.ai's
    answer was lost (worth asking again, once the label has been looked up)."""
    lost = None
    with held_interrupts(_say_held) as held:
        rental.asked = True
        try:
            rental.instance_id = api.create_instance(offer_id, payload)
        except VastUnavailable as err:
            rental.uncertain, lost = True, err
        except BaseException:
            rental.uncertain = True  # even a refusal is checked: a reply of the wrong shape says nothing
            raise
        else:
            record(run, vast_instance_id=rental.instance_id)
    if held.interrupted:
        raise KeyboardInterrupt
    return lost


def _say_held() -> None:
    print(f"gpujob: Ctrl-C: waiting for vast.ai's answer to the rent (at most {CALL_TIMEOUT_S:.0f} s), so that what "
          "it rents is recorded and then destroyed", file=sys.stderr, flush=True)


def _keep_only_the_recorded(api: PatientApi, rental: Rental) -> None:
    """After a rent whose answer was lost: every instance with the run's label but the recorded
    one is a second rental, billing for nothing."""
    try:
        made = api.instances_labelled(rental.label)
    except GpujobError as err:
        print(f"gpujob: {err.message}; check that instance {rental.instance_id} is the only one labelled "
              f"{rental.label!r} with: vastai show instances", file=sys.stderr)
        return
    for extra in made:
        if extra != rental.instance_id:
            print(f"vast: instance {extra} carries this run's label too (rented by a request whose answer was lost); "
                  f"destroying it: instance {rental.instance_id} runs the job", file=sys.stderr)
            destroy(api, extra, must=False)


def close_rental(api: PatientApi, run: Run, rental: Rental, must: bool, watch: Watch) -> str:
    """On every way out: destroy what was rented, keep its log, record what it cost; what
    became of the rental, in words."""
    try:
        return end_rental(api, run, rental, must)
    finally:
        try:
            keep_log(run.folder, watch)
            if rental.instance_id is not None:
                record_cost(api, run, rental.instance_id)
        except OSError as err:  # said, never raised over what brought us here
            print(f"gpujob: warning: could not keep the instance's log and cost in {run.folder}: {err}",
                  file=sys.stderr)


def record_cost(api: PatientApi, run: Run, instance_id: int) -> None:
    """cost.json, on every way out that rented something: the offer's price per hour times
    the time from the rent request to the destroy (vast.ai bills by the second); for a sweep's
    trial on an instance rented before it, from its hand-over to its copy back (pool.py)."""
    from runner.reports.cost import describe, estimate, write_cost

    h = run.handles
    offer = h.get("offer", {})
    basis = ("your bid plus the disk's storage price" if h.get("interruptible")
             else "the offer's on-demand price (dph_total, disk included)")
    cost = estimate("vast", f"instance {instance_id}: {offer.get('num_gpus')}x {offer.get('gpu_name')}",
                    h["price_per_hour"], api.clock() - h["rented_at"],
                    f"{basis} x the time from renting to destroying, measured here; "
                    "vast.ai also bills network traffic")
    if run.folder.exists():  # gone when the job never started: the line below still says what it cost
        write_cost(run.folder, cost)
    print(f"vast: {describe(cost)}", file=sys.stderr)


def end_rental(api: PatientApi, run: Run, rental: Rental, must: bool) -> str:
    """Destroy what the rent made and record it; what became of it, in words. `must` raises a
    destroy that failed (nothing else is being raised); a second Ctrl-C raises exit 130 naming
    the instance."""
    if not rental.asked:
        return "nothing was rented"
    destroyed = rental.instance_id is not None and destroy(api, rental.instance_id, must)
    swept, unlisted = _sweep(api, rental) if rental.uncertain else ([], None)
    if destroyed:
        _record_quietly(run, destroyed=True)
    if rental.instance_id is not None:
        return (f"instance {rental.instance_id} was destroyed" if destroyed else
                f"instance {rental.instance_id} may still be billed: destroy it with: "
                f"vastai destroy instance {rental.instance_id}")
    if unlisted:
        return (f"an instance may have been rented and could not be looked for ({unlisted}); find it with: vastai "
                f"show instances (label {rental.label!r}), and destroy it with: vastai destroy instance ID")
    if swept:
        return f"instance {', '.join(map(str, swept))}, rented as the rent was cut off, was destroyed"
    _put_back(run, rental.before)
    return "nothing was rented"


def _sweep(api: PatientApi, rental: Rental) -> tuple[list[int], str | None]:
    """Destroy every other instance with the run's label (a lost answer's); those destroyed, or
    why they could not be listed."""
    try:
        made = PatientApi(api.api, api.sleep, api.clock, DESTROY_OUTAGE_S).instances_labelled(rental.label)
    except GpujobError as err:
        print(f"gpujob: {err.message}; check for an instance left behind with: vastai show instances",
              file=sys.stderr)
        return [], err.message
    except KeyboardInterrupt:
        raise GpujobError(f"vast: interrupted while looking for the instances labelled {rental.label!r}; one may "
                          "still be billed: find it with: vastai show instances", INTERRUPTED) from None
    return [other for other in made if other != rental.instance_id and destroy(api, other, must=False)], None


def destroy(api: PatientApi, instance_id: int, must: bool) -> bool:
    """Destroy the instance, retrying for minutes while vast.ai does not answer; whether it was.
    If it cannot be done, the user is told loudly (and with `must`, it is raised)."""
    try:
        PatientApi(api.api, api.sleep, api.clock, DESTROY_OUTAGE_S).destroy_instance(instance_id)
    except KeyboardInterrupt:
        raise GpujobError(f"vast: interrupted while destroying instance {instance_id}; it may still be billed: "
                          f"destroy it with: vastai destroy instance {instance_id}", INTERRUPTED) from None
    except GpujobError as err:
        message = (f"vast: could not destroy instance {instance_id} ({err.message}); it is still billed: "
                   f"destroy it now with: vastai destroy instance {instance_id}")
        print(f"gpujob: {message}", file=sys.stderr)
        if must:
            raise job_failed(message) from None
        return False
    print(f"vast: destroyed instance {instance_id}", file=sys.stderr)
    return True


def _record_quietly(run: Run, **handles) -> None:
    """On the way out: a record that cannot be written is said, never raised over the error
    that brought us here."""
    try:
        record(run, **handles)
    except GpujobError as err:
        print(f"gpujob: warning: {err.message}", file=sys.stderr)


def _put_back(run: Run, before: dict) -> None:
    """Nothing was rented: the record's handles as they were (for a first submit, none: the
    folder of a submission that never started is then taken away)."""
    try:
        submission = run_record.read(run.folder)
        submission.handles = dict(before)
        run_record.write(run.folder, submission)
        run.record = submission
    except (OSError, GpujobError) as err:
        print(f"gpujob: warning: {getattr(err, 'message', err)}", file=sys.stderr)
