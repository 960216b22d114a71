"""What runs say, read from their folders and the catalog: the diagnosis, the loss curve,
progress lines, `show`, `compare`, estimates of time and dollars, and cost.json.

Imports from: runner.errors, runner.gpus, runner.spec, runner.runs, runner.training.
"""
