"""`backend: auto`, the default: where a job goes when neither the spec nor --backend says.

Here, when this machine has what `resources.gpu` asks for (or no GPU is asked for); otherwise a
service that rents that GPU: Modal, or vast.ai for the cards Modal lacks when the spec names a
vast.image. An explicit `backend:` or `--backend` always wins.
"""

from __future__ import annotations

from runner.backends import AUTO
from runner.errors import bad_input


# `--gpu all` or `--gpu N`: this machine's GPUs, handed to a container here (the docker backend's
# own option), not a catalogue type to find or rent.
MACHINE_GPUS = "docker.gpus"
CONTAINER_BACKENDS = ("docker",)


def gpu_option(value: str | None) -> dict:
    """--gpu as spec fields: TYPE[:COUNT] sets resources.gpu; all or a count, this machine's GPUs."""
    if value is not None and (value == "all" or value.isdigit()):
        return {MACHINE_GPUS: value}
    return {"resources.gpu": value}


def choose_backend(spec, gpus_here: list[tuple[str, float]] | None = None,
                   machine_gpus: bool = False) -> tuple[str, str]:
    """(backend, why): why is one line for the user. `gpus_here` defaults to this machine's;
    `machine_gpus` says --gpu named this machine's GPUs (all or a count)."""
    if machine_gpus and spec.backend not in CONTAINER_BACKENDS:
        given = spec.docker.gpus
        # `--gpu 4090` is more often a card than four thousand of this machine's GPUs
        example = f"--gpu RTX{given}" if len(given) == 4 else "--gpu A10G:2"
        raise bad_input(f"--gpu {given}: all or a count names this machine's GPUs, for --backend "
                        f"{' or '.join(CONTAINER_BACKENDS)}; for a GPU type write TYPE[:COUNT], e.g. {example}")
    if spec.backend != AUTO:
        return spec.backend, ""
    request = spec.resources.gpu_request
    if request is None:
        return "local", "no GPU asked for: training here"
    if gpus_here is None:
        from runner.hardware import cuda_gpus

        gpus_here = cuda_gpus()
    matching = [name for name, memory in gpus_here if request.type.is_device(name, memory)]
    if len(matching) >= request.count:
        return "local", f"this machine has {request} ({matching[0]})"
    have = f"{len(matching)} {request.type.name}" if matching else ("no CUDA GPU" if not gpus_here else
                                                                     f"{gpus_here[0][0]}, not {request.type.name}")
    if "modal" in request.type.provider_names:
        return "modal", f"resources.gpu asks for {request} and this machine has {have}: renting it on Modal"
    if "vast" in request.type.provider_names and spec.vast.image:
        return "vast", (f"resources.gpu asks for {request}, this machine has {have} and Modal does not offer "
                        f"{request.type.name}: renting it on vast.ai")
    raise bad_input(f"resources.gpu: {request} is not here ({have}) and Modal does not offer {request.type.name}; "
                    "set backend: vast with vast.image, pick another GPU, or --backend local to train here")
