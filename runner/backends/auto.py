"""`backend: auto`, the default: where a job goes when neither the spec nor --backend says.

Here, when this machine has what `resources.gpu` asks for (or no GPU is asked for); otherwise a
service that rents that GPU: Modal, or vast.ai for the cards Modal lacks when the spec names a
vast.image. An explicit `backend:` or `--backend` always wins.
"""

from __future__ import annotations

from runner.backends.base import what_is_here
from runner.backends.registry import HERE, all_backends, get_backend
from runner.errors import bad_input
from runner.spec.model import AUTO


# `--gpu all` or `--gpu N`: this machine's GPUs, handed to a container here (the docker backend's
# own option), not a catalogue type to find or rent.
MACHINE_GPUS = "docker.gpus"


def gpu_option(value: str | None) -> dict:
    """--gpu as spec fields: TYPE[:COUNT] sets resources.gpu; all or a count, this machine's GPUs."""
    if value is not None and (value == "all" or value.isdigit()):
        return {MACHINE_GPUS: value}
    return {"resources.gpu": value}


def choose_backend(spec, gpus_here: list[tuple[str, float]] | None = None,
                   machine_gpus: bool = False) -> tuple[str, str]:
    """(backend, why): why is one line for the user. `gpus_here` defaults to this machine's;
    `machine_gpus` says --gpu named this machine's GPUs (all or a count). Each backend is asked in
    turn whether it takes the job; the first that does gets it."""
    backends = all_backends()
    if machine_gpus and not (spec.backend != AUTO and get_backend(spec.backend).takes_machine_gpus):
        given = spec.docker.gpus
        # `--gpu 4090` is more often a card than four thousand of this machine's GPUs
        example = f"--gpu RTX{given}" if len(given) == 4 else "--gpu A10G:2"
        takers = " or ".join(b.name for b in backends if b.takes_machine_gpus)
        raise bad_input(f"--gpu {given}: all or a count names this machine's GPUs, for --backend {takers}; for a "
                        f"GPU type write TYPE[:COUNT], e.g. {example}")
    if spec.backend != AUTO:
        return spec.backend, ""
    request = spec.resources.gpu_request
    if gpus_here is None:
        from runner.hardware import cuda_gpus

        gpus_here = cuda_gpus() if request is not None else []
    for backend in backends:
        why = backend.takes(spec, gpus_here)
        if why:
            return backend.name, why
    hints = [hint for hint in (b.auto_hint(spec) for b in backends) if hint]
    raise bad_input(f"resources.gpu: {request} is not here ({what_is_here(request, gpus_here)}) and no backend "
                    f"rents {request.type.name}; {', '.join(hints + ['pick another GPU'])}, or --backend "
                    f"{HERE} to train here")
