"""The slurm backend: see backend.py."""

from runner.backends.slurm.backend import BACKEND  # noqa: F401
