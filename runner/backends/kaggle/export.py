"""`gpujob export kaggle SPEC OUT/`: a folder that `kaggle kernels push -p OUT/` accepts.

A Kaggle script kernel is one file: `kaggle kernels push` uploads only the code_file's text,
and the kernel cannot see this machine. So run_gpujob.py carries everything in itself: the
resolved spec, gpujob's own source (a zip, put on PYTHONPATH) and gpujob's requirements as
the ranges pyproject.toml declares, not the pins of uv.lock: Kaggle's image already holds
them all, and its torch was built against its own numpy, pillow and the rest, so pinning
gpujob's versions over them could break it. On Kaggle the script installs only the
requirements that no installed distribution satisfies (absent, or too old), never a torch over
Kaggle's, and holds every other installed distribution at its version while pip works. Then
it runs the job with the same worker command as every backend, into /kaggle/working/runs/NAME,
which Kaggle keeps as the kernel's output (`kaggle kernels output OWNER/SLUG -p DEST`).

Internet: the kernel's metadata is fixed when it is pushed, before it can look at what it
has. So the export decides from what it knows: the kernel runs with internet off when Kaggle's
image (as recorded in KAGGLE_IMAGE) satisfies every requirement and the job downloads no data;
otherwise on, and the export says why.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tomllib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from runner.errors import bad_input, missing_backend
from runner.gpus import bf16_refusal, parse_gpu
from runner.spec.model import JobSpec
from runner.spec.load import validate_spec

if TYPE_CHECKING:
    from runner.usercode.shipping import UserCode

CODE_FILE = "run_gpujob.py"
PLACEHOLDER_USER = "YOUR-KAGGLE-USERNAME"
# Kaggle's "GPU T4 x2", its one T4 accelerator (a single T4 is not offered): kaggle-cli PR #1198.
# `kaggle kernels push` sends it as the request's machine_shape; without one a GPU kernel may get
# a P100 (sm_60), which current torch builds no longer support. Not checked by the CLI: it must be exact.
MACHINE_SHAPE = "NvidiaTeslaT4"
ACCELERATOR = "GPU T4 x2"
KAGGLE_GPU = "T4"
KAGGLE_GPUS = 2
# Kaggle's server refuses a kernel title over 50 characters (an HTTP 500 from `kaggle kernels push`:
# kaggle-cli PR #179, learntools PR #48); its CLI wants 5 or more, and the id's slug to be the title's.
TITLE_MAX = 50
# The Kaggle secret the kernel reads its webhook URLs from: the URL is a credential, never in the bundle.
NOTIFY_SECRET = "GPUJOB_NOTIFY"
PACKAGE = Path(__file__).resolve().parents[2]  # runner/
PYPROJECT = PACKAGE.parent / "pyproject.toml"
# What `gpujob run` never imports: clients for other backends and their retry loop (tenacity),
# and the export's own helper (the kernel script falls back to pip's copy of packaging), so the
# kernel needs none of them.
NOT_FOR_THE_KERNEL = {"modal", "packaging", "tenacity", "nvidia-ml-py"}  # a job without NVML goes on unsampled
SWEEPS_ONLY = "optuna"  # `gpujob sweep`'s search and pruning; `gpujob run` never imports it
# Kaggle's torch is built for the driver of its GPUs; the kernel never installs one over it.
KAGGLE_TORCH_STACK = ("torch", "torchvision")
# What Kaggle's image holds of gpujob's requirements, from Kaggle/docker-python's package list
# (installed_cpu_packages.txt, 2026-06-17; the GPU image is built from the same list, with a
# CUDA torch). Only the internet decision reads it: the kernel checks what is really installed.
KAGGLE_IMAGE = {"torch": "2.10.0", "torchvision": "0.25.0", "numpy": "2.4.6", "pydantic": "2.12.3",
                "typer": "0.24.1", "pyyaml": "6.0.3", "matplotlib": "3.10.0", "rich": "13.9.4",
                "scikit-learn": "1.6.1"}
# torchvision downloads these when data.download is true.
DOWNLOADED_DATASETS = {"fashion_mnist", "mnist", "cifar10"}


def kernel_slug(title: str) -> str:
    """Kaggle derives a kernel's URL slug from its title (python-slugify): lower case, dashes for
    the rest. The same for the letters, digits, '.', '_' and '-' a spec's name may hold."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def kernel_title(name: str) -> str:
    """`gpujob NAME`, or where that passes TITLE_MAX, its start and a hash of the whole name: the
    same name always gets the same kernel, and two long names that start alike never share one
    (a push to an existing slug replaces that kernel's code)."""
    title = f"gpujob {name}"
    if len(title) <= TITLE_MAX:
        return title
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{title[:TITLE_MAX - len(digest) - 1].rstrip('._-')}-{digest}"


def kernel_requirements(sweep: bool = False) -> list[str]:
    """gpujob's requirements as pyproject.toml declares them (ranges), less what the kernel never
    imports: Optuna only where the kernel runs a sweep."""
    if not PYPROJECT.is_file():
        raise missing_backend(f"export kaggle: {PYPROJECT} is missing; run it from a gpujob checkout")
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    unused = NOT_FOR_THE_KERNEL | (set() if sweep else {SWEEPS_ONLY})
    return [line for line in declared if canonicalize_name(Requirement(line).name) not in unused]


def missing_from_kaggle(requirements: list[str]) -> list[str]:
    """The requirements that Kaggle's image, as recorded in KAGGLE_IMAGE, does not satisfy."""
    missing = []
    for line in requirements:
        requirement = Requirement(line)
        version = KAGGLE_IMAGE.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def internet_reasons(spec: JobSpec, requirements: list[str], notify: bool = False) -> list[str]:
    """Why the kernel needs the internet; none means it runs with internet off."""
    reasons = [f"pip install {line}" for line in missing_from_kaggle(requirements)]
    if notify:  # the POSTs, and kaggle_secrets asks Kaggle's service for the secret
        reasons.append(f"notifications (the webhooks of the Kaggle secret {NOTIFY_SECRET})")
    if spec.data.dataset in DOWNLOADED_DATASETS and spec.data.download:
        reasons.append(f"data.download of {spec.data.dataset}")
    if ":" in spec.data.dataset:  # a factory's own code may fetch anything
        reasons.append(f"data.dataset {spec.data.dataset}")
    return reasons


def kernel_metadata(spec: JobSpec, user: str | None, datasets: list[str], internet: bool = True) -> dict:
    title = kernel_title(spec.name)
    return {
        "id": f"{user or PLACEHOLDER_USER}/{kernel_slug(title)}",
        "title": title,
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": internet,  # see internet_reasons
        "machine_shape": MACHINE_SHAPE,
        "dataset_sources": datasets,
        "competition_sources": [],
        "kernel_sources": [],
        "model_sources": [],
    }


def package_zip() -> bytes:
    """gpujob's own source (runner/*.py) as a zip that Python can import from."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(PACKAGE.rglob("*.py")):
            archive.write(path, Path("runner") / path.relative_to(PACKAGE))
    return buffer.getvalue()


def code_zip(code: "UserCode | None") -> bytes:
    """The user's code the job needs (runner/user_code.py), as a zip the kernel unpacks; empty
    when it needs none. Imported from a copy first, alone: what the copy lacks is said now."""
    if code is None:
        return b""
    code.check_a_copy()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, rel in code.files:
            archive.write(path, rel)
    return buffer.getvalue()


def render_script(spec: JobSpec, requirements: list[str], code: "UserCode | None" = None, sweep: bool = False,
                  notify: bool = False) -> str:
    template = (Path(__file__).with_name("kernel.py.template")).read_text()
    values = {
        "SPEC_YAML": repr(spec.to_yaml()),
        "SWEEP": repr(sweep),
        "NOTIFY": repr(notify),
        "RUN_NAME": repr(spec.name),
        "REQUIREMENTS": repr(requirements),
        "KAGGLE_TORCH_STACK": repr(KAGGLE_TORCH_STACK),
        "PACKAGE_ZIP_B64": repr(base64.b64encode(package_zip()).decode()),
        "USER_CODE_ZIP_B64": repr(base64.b64encode(code_zip(code)).decode()),
    }
    for key, value in values.items():
        template = template.replace(f"__{key}__", value)
    return template


def on_kaggles_cards(spec: JobSpec) -> JobSpec:
    """The spec as the kernel runs it: resources.gpu says the T4s it gets (the run's spec.yaml then
    says what ran it), as many as the spec asks for (no GPU: one). What a T4 cannot do, or more
    GPUs than the accelerator has, is refused here, before anything is written."""
    request = spec.resources.gpu_request
    count = request.count if request else 1
    if count > KAGGLE_GPUS:
        raise bad_input(f"resources.gpu: {spec.resources.gpu} asks for {count} GPUs; Kaggle's largest GPU "
                        f"accelerator, {ACCELERATOR}, has {KAGGLE_GPUS}: ask for {KAGGLE_GPU}:{KAGGLE_GPUS} "
                        f"(e.g. --set resources.gpu={KAGGLE_GPU}:{KAGGLE_GPUS})")
    card = parse_gpu(f"{KAGGLE_GPU}:{count}")
    assert card is not None, "a GPU type is never read as cpu"
    refusal = bf16_refusal(KAGGLE_GPU, card.type.compute_capability) if spec.train.precision == "bf16" else None
    if refusal:
        raise bad_input(f"train.precision: bf16, but Kaggle's {ACCELERATOR} runs it: {refusal}, e.g. "
                        "--set train.precision=fp16")
    data = spec.model_dump(mode="json")
    data["resources"]["gpu"] = str(card)
    return validate_spec(data, source="the spec on Kaggle's T4s")


def accelerator_line(asked: JobSpec, runs: JobSpec) -> str:
    on_kaggle = runs.resources.gpu_request
    assert on_kaggle is not None, "the spec on Kaggle names its T4s"
    count = on_kaggle.count
    workers = (f"{count} DDP workers, one per {KAGGLE_GPU}" if count == KAGGLE_GPUS else
               f"1 worker on one of its {KAGGLE_GPUS} {KAGGLE_GPU}s (resources.gpu {KAGGLE_GPU}:{KAGGLE_GPUS} uses both)")
    request = asked.resources.gpu_request
    if request and request.type.name != KAGGLE_GPU:
        workers += f" (resources.gpu {request} becomes {runs.resources.gpu}: Kaggle's cards are {KAGGLE_GPU}s)"
    return (f"accelerator: {ACCELERATOR} (machine_shape {MACHINE_SHAPE}): {workers}; if the kernel's log shows other "
            f"GPUs, pick {ACCELERATOR} under the notebook's Settings > Accelerator")


def export_kernel(spec: JobSpec, out: Path, user: str | None, datasets: list[str],
                  code: "UserCode | None" = None, sweep: bool = False, notify: bool = False) -> list[str]:
    """Write OUT/kernel-metadata.json and OUT/run_gpujob.py (carrying the user's `code`, if
    any); return what to tell the user. With `sweep`, the kernel runs `gpujob sweep` on the spec
    (its sweep: section, checked by the caller): the trials in turn in one process, on the kernel's
    own machine. With `notify` (or the spec's notify:), the kernel tells the webhooks of its Kaggle
    secret NOTIFY_SECRET; the spec's URLs are never written (spec.to_yaml leaves notify out)."""
    out = Path(out)
    notify = notify or bool(spec.notify)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise bad_input(f"{out}: not an empty folder; gpujob export never overwrites one")
    for dataset in datasets:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset):
            raise bad_input(f"--dataset {dataset}: expected OWNER/SLUG, e.g. zalando-research/fashionmnist")
    kernel_spec = on_kaggles_cards(spec)
    if sweep:  # the trials train where the sweep runs: the kernel
        kernel_spec = kernel_spec.model_copy(update={"backend": "local"})
    requirements = kernel_requirements(sweep)
    reasons = internet_reasons(kernel_spec, requirements, notify)
    metadata = kernel_metadata(kernel_spec, user, datasets, internet=bool(reasons))
    script = render_script(kernel_spec, requirements, code, sweep, notify)  # before writing: no half-made folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out / CODE_FILE).write_text(script)
    kernel = metadata["id"]
    lines = [f"wrote {out / 'kernel-metadata.json'} and {out / CODE_FILE} (kernel {kernel})",
             accelerator_line(spec, kernel_spec),
             f"internet on, for: {'; '.join(reasons)}" if reasons else
             "internet off: Kaggle's image has every requirement and the job downloads nothing"]
    if metadata["title"] != f"gpujob {spec.name}":
        lines.append(f"title: '{metadata['title']}': `gpujob {spec.name}` is {len(spec.name) + 7} characters and "
                     f"Kaggle allows {TITLE_MAX} characters, so the name is cut and ends in a hash of the whole name "
                     "(one name, one kernel)")
    if not user:
        lines.append(f"edit the id in kernel-metadata.json: replace {PLACEHOLDER_USER} with your Kaggle username "
                     "(or export again with --kaggle-user or KAGGLE_USERNAME set)")
    if notify:
        lines.append(f"notifications: add a Kaggle secret named {NOTIFY_SECRET} with your webhook URL (Add-ons > "
                     "Secrets) and attach it to the kernel; the folder holds no URL")
    lines += [f"run it:        kaggle kernels push -p {out}",
              f"follow it:     kaggle kernels status {kernel}",
              f"fetch results: kaggle kernels output {kernel} -p DEST   (the " + (
                  f"sweep folder is runs/{spec.name}-sweep-*/" if sweep else f"run folder is runs/{spec.name}/") + ")"]
    return lines
