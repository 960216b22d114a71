"""gpujob: run PyTorch training jobs from YAML specs, on this machine or on rented GPUs.

The layers, lowest first. A module imports only from its own layer and those below it (tests/
test_structure.py checks it, imports inside functions included):

    errors, gpus, hardware   exit codes and the one error type; the GPU catalog; this machine's devices
    spec/                    the job spec: its fields, reading YAML, saying what is wrong
    usercode/                the user's own code: importing it, and shipping it with a job
    runs/                    the run folder: its files, record, lock, state, and reading it back
    training/                the one training function and what it is built from
    reports/                 what a run says: diagnosis, plots, show, compare, estimates, cost
    launching/               one job's processes on one node: the launcher and the worker
    backends/                where a job runs: local, docker, slurm, modal, vast.ai, a Kaggle bundle
    sweeps/                  many trials of one spec: axes, Optuna's search and pruning, sweep.json, the answer
    cli/                     the gpujob command
"""
