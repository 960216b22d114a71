"""Backends: where a job runs, behind one interface (TorchX's Scheduler and submitit's Job are
the models). Each backend is a class here (base.Backend), made by the registry (registry.py):

    plan(spec, spec_path, runs_dir, run_name) -> Plan  # pure: the exact request; --dry-run prints it
    send(run, request, detach)    # starts the job the request describes, records its handles
    stop(run, state)              # asks the live job to stop (it checkpoints) and waits out the grace
    status(run) -> RunState       # pending | running | finished | failed | cancelled | preempted
    logs(run, follow) -> lines    # the job's output so far (and as it comes, with follow)
    fetch(run) -> str             # bring the run folder here

and base.Backend writes the chores once on top of them: `submit` keeps job/spec.yaml and
job/request.json (exactly what was sent) and sends it, `resume` sends the recorded request again,
`cancel` checks the run is live and notes "cancel asked" before it stops it. Each backend ends up
running the same worker (`gpujob run`, runner/launching/command.py) on the same spec. A `run` is
a run folder with its submission record (runner/runs/record.py), which holds the backend's
handles. Modules are imported only when their backend is used, so `gpujob --help` stays instant
and a missing SDK only matters to the backend that needs it.

Imports from every layer below: runner.errors, gpus, hardware, spec, usercode, runs, training,
reports and launching; never from runner.cli.
"""
