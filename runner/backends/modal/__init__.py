"""The modal backend: see backend.py."""

from runner.backends.modal.backend import BACKEND  # noqa: F401
