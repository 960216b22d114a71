"""The vast backend (backend.py holds its class).

Imports from runner.backends.base and the layers below it."""
