"""Kaggle: a kernel folder that runs the job in a Kaggle notebook (`gpujob export kaggle`).

Imports from: runner.errors, runner.gpus, runner.spec, runner.usercode.
"""
