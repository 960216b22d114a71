"""The one registry of backends: each name the spec allows (runner.spec.model.BACKENDS) and the
class that runs it, imported only when that backend is used, so `gpujob --help` stays instant and
a missing SDK matters only to the backend that needs it.

Backends are made here, with what they depend on (`create_backend(name, **deps)`: an SDK
connection, a clock); `provide` puts a backend made with other deps (a test's fake service) in
place of the default one, for everything that asks the registry.
"""

from __future__ import annotations

import importlib
from typing import Callable

from runner.backends.base import Backend
from runner.errors import bad_input
from runner.spec.model import AUTO, BACKENDS

CLASSES = {
    "local": "runner.backends.local:LocalBackend",
    "modal": "runner.backends.modal.backend:ModalBackend",
    "docker": "runner.backends.docker.backend:DockerBackend",
    "vast": "runner.backends.vast.backend:VastBackend",
    "slurm": "runner.backends.slurm.backend:SlurmBackend",
}
HERE = BACKENDS[0]  # the backend that trains in this process ("local"): `resume --here` moves a run to it
_made: dict[str, Backend] = {}


def create_backend(name: str, **deps) -> Backend:
    """A new backend of that name, made with `deps` (its own keyword arguments)."""
    if name not in CLASSES:
        raise bad_input(f"--backend: '{name}' is not a backend; pick one of {AUTO}, {', '.join(BACKENDS)}")
    module, _, cls = CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**deps)


def get_backend(name: str) -> Backend:
    """The backend of that name everything uses: made once, with its default deps."""
    if name not in _made:
        _made[name] = create_backend(name)
    return _made[name]


def provide(backend: Backend) -> Callable[[], None]:
    """Use `backend` for its name from now on; returns what puts the previous one back."""
    previous = _made.get(backend.name)
    _made[backend.name] = backend

    def restore() -> None:
        if previous is None:
            _made.pop(backend.name, None)
        else:
            _made[backend.name] = previous

    return restore


def known_backend(name: str) -> Backend | None:
    """The backend a record names, or None for a name this version does not know."""
    return get_backend(name) if name in CLASSES else None


def all_backends() -> list[Backend]:
    """Every backend, in the spec's order: the order `backend: auto` asks them in."""
    return [get_backend(name) for name in BACKENDS]
