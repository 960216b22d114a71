"""Sweeps (`gpujob sweep`): one spec, several trials that vary some of its fields. Axes and their
checks (axes.py), the search and pruning from Optuna with its journal file in the sweep folder
(study.py), the sweep's record sweep.json (record.py), trials run one after another in one process
(trial.py, driver.py), and the answer: a table, best.yaml and a plot (report.py).

Every trial is an ordinary run folder inside the sweep folder, made and trained as `gpujob submit`
does on this machine, so `status`, `logs`, `show`, `resume` and `compare` work on it.

Imports from: runner.errors, runner.spec, runner.runs, runner.training, runner.reports,
runner.launching and runner.backends; only runner.cli imports it.
"""
