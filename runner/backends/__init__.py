"""Backends: where a job runs, behind one interface (TorchX's Scheduler and submitit's Job are
the models). Each backend is a module or package here whose `BACKEND` has

    plan(spec, spec_path, runs_dir, run_name) -> Plan  # pure: the exact request; --dry-run prints it
    submit(plan, run, detach)     # sends plan.request, records its handles; attached, follows it to the end
    status(run) -> RunState       # pending | running | finished | failed | cancelled | preempted
    logs(run, follow) -> lines    # the job's output so far (and as it comes, with follow)
    cancel(run) -> str            # stop it, letting it checkpoint first where the backend can
    fetch(run) -> str             # bring the run folder here
    resume(run, detach)           # submit it again: it continues from its last checkpoint

and each ends up running the same worker (`gpujob run`) on the same spec. A `run` is a run
folder with its submission record (runner/runs/record.py), which holds the backend's handles.
Modules are imported only when their backend is used, so `gpujob --help` stays instant and a
missing SDK only matters to the backend that needs it.

Imports from every layer below: runner.errors, gpus, hardware, spec, usercode, runs, training,
reports and launching; never from runner.cli.
"""
