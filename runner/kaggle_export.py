"""`gpujob export kaggle SPEC OUT/`: a folder that `kaggle kernels push -p OUT/` accepts.

A Kaggle script kernel is one file: `kaggle kernels push` uploads only the code_file's text,
and the kernel cannot see this machine. So run_gpujob.py carries everything in itself: the
resolved spec, gpujob's own source (a zip, put on PYTHONPATH) and the pinned requirements.
On Kaggle it pip-installs those requirements, except the torch stack: Kaggle's torch is
built for its GPUs' driver, and the pinned CUDA 13 build might not run on it. Then it runs
the job with the same worker command as every backend, into /kaggle/working/runs/NAME, which
Kaggle keeps as the kernel's output (`kaggle kernels output OWNER/SLUG -p DEST`).
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from pathlib import Path

from runner.errors import bad_input, missing_backend
from runner.spec import JobSpec

CODE_FILE = "run_gpujob.py"
PLACEHOLDER_USER = "YOUR-KAGGLE-USERNAME"
# Kaggle's T4 x2. Without a machine_shape a GPU kernel may get a P100 (sm_60), which current
# torch builds no longer support; the value is not checked by Kaggle, so it must be exact.
MACHINE_SHAPE = "NvidiaTeslaT4"
KAGGLE_GPUS = 2
PACKAGE = Path(__file__).resolve().parent  # runner/
REQUIREMENTS = PACKAGE.parent / "images" / "requirements.txt"


def kernel_slug(title: str) -> str:
    """Kaggle derives a kernel's URL slug from its title: lower case, dashes for the rest."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def kernel_metadata(spec: JobSpec, user: str | None, datasets: list[str]) -> dict:
    title = f"gpujob {spec.name}"
    return {
        "id": f"{user or PLACEHOLDER_USER}/{kernel_slug(title)}",
        "title": title,
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": True,  # it pip-installs the requirements Kaggle lacks
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


def render_script(spec: JobSpec, requirements: str) -> str:
    template = (Path(__file__).with_name("kaggle_kernel.py.template")).read_text()
    values = {
        "SPEC_YAML": repr(spec.to_yaml()),
        "RUN_NAME": repr(spec.name),
        "REQUIREMENTS": repr(requirements),
        "PACKAGE_ZIP_B64": repr(base64.b64encode(package_zip()).decode()),
    }
    for key, value in values.items():
        template = template.replace(f"__{key}__", value)
    return template


def export_kernel(spec: JobSpec, out: Path, user: str | None, datasets: list[str]) -> list[str]:
    """Write OUT/kernel-metadata.json and OUT/run_gpujob.py; return what to tell the user."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise bad_input(f"{out}: not an empty folder; gpujob export never overwrites one")
    for dataset in datasets:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset):
            raise bad_input(f"--dataset {dataset}: expected OWNER/SLUG, e.g. zalando-research/fashionmnist")
    if not REQUIREMENTS.is_file():
        raise missing_backend(f"export kaggle: {REQUIREMENTS} is missing; run it from a gpujob checkout")
    metadata = kernel_metadata(spec, user, datasets)
    script = render_script(spec, REQUIREMENTS.read_text())  # before writing: no half-made folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out / CODE_FILE).write_text(script)
    kernel = metadata["id"]
    lines = [f"wrote {out / 'kernel-metadata.json'} and {out / CODE_FILE} (kernel {kernel}, GPU T4 x{KAGGLE_GPUS})"]
    if not user:
        lines.append(f"edit the id in kernel-metadata.json: replace {PLACEHOLDER_USER} with your Kaggle username "
                     "(or export again with --kaggle-user or KAGGLE_USERNAME set)")
    request = spec.resources.gpu_request
    if request and request.count > KAGGLE_GPUS:
        lines.append(f"note: resources.gpu asks for {request.count} GPUs; Kaggle gives {KAGGLE_GPUS}, so the "
                     "job will stop with that error: lower the count")
    lines += [f"run it:        kaggle kernels push -p {out}",
              f"follow it:     kaggle kernels status {kernel}",
              f"fetch results: kaggle kernels output {kernel} -p DEST   (the run folder is runs/{spec.name}/)"]
    return lines
