"""One job's processes on one node: the launcher (workers as children, signals, the time limit,
which rank to blame) and the worker (one rank: it opens the run folder and trains).

Imports from: runner.errors, runner.hardware, runner.spec, runner.usercode, runner.runs,
runner.training, runner.reports.
"""
