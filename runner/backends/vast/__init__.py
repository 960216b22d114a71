"""The vast backend: see backend.py."""

from runner.backends.vast.backend import BACKEND  # noqa: F401
