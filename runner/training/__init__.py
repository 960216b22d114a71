"""The one training function (loop.py) and what it is built from: datasets, batches, models,
the step, optimizer and precision, checkpoints, FLOPs and memory, the process group.

Imports from: runner.errors, runner.gpus, runner.hardware, runner.spec, runner.usercode, runner.runs.
"""
