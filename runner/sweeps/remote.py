"""A sweep's trials on a backend that runs jobs elsewhere (Modal, vast.ai, Docker): each trial an
ordinary detached submission of its spec (one Modal call, one container; on vast.ai a turn on one
of at most sweep.max_parallel instances the backend keeps for the sweep, Backend.sweep_machines),
at most sweep.max_parallel at once, followed from this process until it ends and then brought back.

The budget, sweep.max_usd, holds across all trials: no trial starts once what was spent (the
ended trials' cost.json) and what the running ones have cost so far (their price per hour since
they were submitted) and are expected to cost (their estimate) would pass it, and running trials
are cancelled (they checkpoint) once what they have cost reaches it. A stop of this driver
(`gpujob sweep cancel`, Ctrl-C) cancels every running trial: nothing is left running or billing.

The sweep's pruner judges these trials too (runner/sweeps/pruning.py): each running trial's closed
epochs are read as its backend shows them while it runs, and one the pruner stops is cancelled (it
checkpoints and ends) and recorded pruned at the epoch judged."""

from __future__ import annotations

import time
from pathlib import Path

from runner.errors import BUDGET_REACHED, GpujobError
from runner.runs import record as run_record
from runner.runs.folder import RunFolder
from runner.runs.state import Run
from runner.spec.model import JobSpec
from runner.sweeps import record as rec
from runner.sweeps.axes import spec_with
from runner.sweeps.claims import claim_next, finish_trial, trial_line
from runner.sweeps.pruning import RemotePruner
from runner.sweeps.record import CANCELLED, FAILED
from runner.sweeps.trial import TrialOutcome, outcome_of, trial_name

POLL_S = 1.0
BUDGET = "budget"


def remote_trial_name(folder: Path, number: int) -> str:
    """Unique beyond this sweep: the run's name on a service's volume or disk is its folder's."""
    return f"{folder.name}-{trial_name(number)}"


def start_trial(folder: Path, number: int, params: dict, backend) -> Run:
    """The trial's run folder and its detached submission, as `gpujob submit --detach` makes them."""
    from runner.reports.estimate import before_run

    sweep = rec.read(folder)
    spec = spec_with(sweep.base, params, sweep.spec_path, name=f"{sweep.name}-{trial_name(number)}"[:80])
    backend.check_costless(spec, sending=True)
    plan = backend.plan(spec, Path(sweep.spec_path), folder, remote_trial_name(folder, number))
    plan.ships_code = backend.ships_code
    submission = run_record.new_submission(plan.backend, plan.run_name, spec, Path(sweep.spec_path), True,
                                           plan.world_size)
    submission.estimate = (before_run(spec, folder) if backend.rents else None) or {}
    run = Run(RunFolder.start(plan.folder, submission).path, submission)
    backend.submit(plan, run, True)
    return Run(run.folder, run_record.read(run.folder))


def _start_or_resume(folder: Path, claim, backend) -> Run:
    trial = rec.read(folder).trial(claim.number)
    path = folder / trial.folder
    if claim.resume and run_record.is_run(path):
        run = Run(path, run_record.read(path))
        if backend.status(run).live:  # a killed driver's trial still runs there: followed, never started twice
            return run
        backend.resume(run, True)  # a cancelled trial: its backend continues it from its checkpoint
        return Run(path, run_record.read(path))
    return start_trial(folder, claim.number, claim.params, backend)


def spent_usd(folder: Path, sweep: rec.SweepRecord, running: dict[int, Run]) -> tuple[float, float]:
    """(spent so far, expected still) in US$: ended trials' cost.json, running ones' price per hour
    since they were submitted, and what their estimates say remains."""
    spent = expected = 0.0
    for trial in sweep.trials:
        path = folder / trial.folder / "cost.json"
        if trial.number not in running and path.is_file():
            try:
                import json

                spent += float(json.loads(path.read_text()).get("estimated_usd") or 0.0)
            except (OSError, ValueError):
                pass
    for run in running.values():
        estimate = run.record.estimate or {}
        started = run.record.last_start() or time.time()
        so_far = (estimate.get("usd_per_hour") or 0.0) * (time.time() - started) / 3600
        spent += so_far
        expected += max((estimate.get("total_usd") or 0.0) - so_far, 0.0)
    return spent, expected


def run_remote(folder: Path, backend, signals, say=print) -> int:
    """Start trials up to max_parallel, follow them, bring each back and record it, until none is
    left, the budget is reached, or this driver is stopped (then every running trial is cancelled);
    on the machines the backend keeps for the sweep, if it keeps any (given up at the end)."""
    sweep = rec.read(folder)
    with backend.sweep_machines(sweep.max_parallel, trial_runs(folder, sweep)):
        return _drive(folder, backend, signals, say)


def trial_runs(folder: Path, sweep: rec.SweepRecord) -> list[Run]:
    """The sweep's trials that have a run folder, each with its record (the handles on its machine)."""
    return [Run(folder / t.folder, run_record.read(folder / t.folder)) for t in sweep.trials
            if run_record.is_run(folder / t.folder)]


def _drive(folder: Path, backend, signals, say) -> int:
    running: dict[int, Run] = {}
    stopping = False
    pruner = RemotePruner(folder, rec.read(folder))
    while True:
        sweep = rec.read(folder)
        stopping = stopping or signals.signum is not None or sweep.cancel_asked or _over_budget(folder, sweep, running)
        while not stopping and len(running) < sweep.max_parallel and not _next_would_pass(folder, sweep, running):
            claim = claim_next(folder, naming=lambda number: remote_trial_name(folder, number))
            if claim is None:
                break
            try:
                running[claim.number] = _start_or_resume(folder, claim, backend)
            except GpujobError as err:
                say(trial_line(finish_trial(folder, claim.number, TrialOutcome(FAILED, detail=err.message)),
                               rec.read(folder).trial(claim.number)))
        if stopping:
            _cancel_all(backend, running)
        for number, run in list(running.items()):
            if backend.status(run).live:
                if not stopping and pruner.should_stop(backend, number, run):
                    running[number] = _prune(backend, run, pruner.followed[number].pruned_at)
                continue
            outcome = pruner.outcome(number, _brought_back(backend, run, rec.read(folder).metric))
            sweep = finish_trial(folder, number, outcome)
            say(trial_line(sweep, sweep.trial(number)))
            del running[number]
        if not running and (stopping or claim_next_is_none(folder)):
            break
        if not running and _next_would_pass(folder, sweep, running):
            _note_budget(folder, *spent_usd(folder, sweep, running))
            break
        time.sleep(POLL_S)
    if signals.signum is not None:
        return signals.exit_code
    return BUDGET_REACHED if _budget_noted(rec.read(folder)) else 0


def claim_next_is_none(folder: Path) -> bool:
    sweep = rec.read(folder)
    return len(sweep.trials) >= sweep.planned and all(t.state in rec.ENDED for t in sweep.trials)


def _over_budget(folder: Path, sweep: rec.SweepRecord, running: dict[int, Run]) -> bool:
    if sweep.max_usd is None:
        return False
    spent, expected = spent_usd(folder, sweep, running)
    if spent < sweep.max_usd:
        return False
    _note_budget(folder, spent, expected)
    return True


def _note_budget(folder: Path, spent: float, expected: float) -> None:
    """The budget's stop, once in the record: what was spent, and what the running trials would have cost on."""
    with rec.updating(folder) as record:
        if not _budget_noted(record):
            record.note(BUDGET, spent_usd=round(spent, 4), expected_usd=round(expected, 4), max_usd=record.max_usd)


def _next_would_pass(folder: Path, sweep: rec.SweepRecord, running: dict[int, Run]) -> bool:
    """Whether one more trial, at the estimate of one like it, would take the sweep past its budget."""
    if sweep.max_usd is None:
        return False
    from runner.reports.estimate import before_run

    spent, expected = spent_usd(folder, sweep, running)
    guess = before_run(JobSpec.model_validate(sweep.base)) or {}
    return spent + expected + (guess.get("total_usd") or 0.0) > sweep.max_usd


def _cancel_all(backend, running: dict[int, Run]) -> None:
    for run in running.values():
        if backend.status(run).live:
            backend.cancel(run)


def _prune(backend, run: Run, epoch: int | None) -> Run:
    """Cancel a trial the pruner stopped: the job checkpoints and ends, and costs nothing further.
    Its own record says why (`gpujob show`), read afresh: the backend may have written it since."""
    fresh = Run(run.folder, run_record.read(run.folder))
    fresh.record.note("pruned", epoch=epoch)
    run_record.write(fresh.folder, fresh.record)
    backend.cancel(fresh)
    return Run(run.folder, run_record.read(run.folder))


def _brought_back(backend, run: Run, metric: str) -> TrialOutcome:
    state = backend.status(run)
    try:
        backend.fetch(run)
    except GpujobError as err:
        return TrialOutcome(FAILED, detail=err.message)
    outcome = outcome_of(run.folder, metric, 0.0)
    if outcome.state == FAILED:
        outcome.state = CANCELLED if state.state in ("cancelled", "preempted") else FAILED
        outcome.detail = " ".join(filter(None, (state.detail, _last_said(run.folder))))
    summary = run.folder / "timing.json"
    if summary.is_file():
        import json

        outcome.wall_s = float(json.loads(summary.read_text()).get("total_s") or 0.0)
    return outcome


def _budget_noted(sweep: rec.SweepRecord) -> bool:
    """Whether the budget stopped this start of the sweep (a resume, with a higher budget, starts afresh)."""
    for event in reversed(sweep.events):
        if event["event"] == BUDGET:
            return True
        if event["event"] in ("started", "resumed"):
            return False
    return False


def _last_said(folder: Path) -> str:
    """The job's own last line where the backend kept its output (a container's job/output.log):
    why a trial failed, beside the backend's exit code."""
    output = folder / "job" / "output.log"
    try:
        lines = [line for line in output.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f"({lines[-1].strip()[:300]})" if lines else ""
