"""The job spec: the user-facing contract (Pydantic models), read from YAML with `--set`
overrides, and one line saying what is wrong and what to write instead.

Imports from: runner.errors, runner.gpus.
"""
