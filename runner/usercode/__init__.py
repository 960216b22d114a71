"""The user's own code a spec names (`package.module:name`): found beside the spec, here or on
PYTHONPATH, imported with a one-line error when it cannot be, and shipped with the job.

Imports from: runner.errors, runner.spec.
"""
