"""The `gpujob` command: one typer app (app.py), the entry point (main.py) and one module per group of commands (jobs,
lifecycle, tools, reports). The commands name no backend: `submit` asks runner/backends/auto.py
where a job goes, and the lifecycle commands ask the backend the run's record names.

Imports from every layer below; nothing imports from it.
"""
