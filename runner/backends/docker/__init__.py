"""The docker backend: see backend.py."""

from runner.backends.docker.backend import BACKEND  # noqa: F401
