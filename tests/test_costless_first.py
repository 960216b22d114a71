"""What costs nothing is checked first (issue 29): a missing SDK, a spec the backend cannot run
and missing credentials are each answered before gpujob imports torch, times a step or estimates
a bill. "Before" is checked by what the process imported (`python -X importtime`), not by a
wall-clock bound, so it holds on a loaded machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TORCH_IMPORTED = re.compile(r"^import time:.*\|\s+torch$", re.MULTILINE)


def gpujob_bare(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`gpujob ARGS` as a user without Modal or vast.ai credentials runs it (a HOME of its own),
    with Python's import log on stderr."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("MODAL_", "VAST_")) and k not in ("XDG_CONFIG_HOME",)}
    full.update(HOME=str(home), MODAL_CONFIG_PATH=str(home / ".modal.toml"), **(env or {}))
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "runner.cli", *args], capture_output=True,
                          text=True, timeout=300, env=full, cwd=REPO)


def said(out: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in out.stderr.splitlines() if not line.startswith("import time:"))


def without_vastai(tmp_path: Path) -> dict:
    """An environment where `import vastai` fails as it does where the package is not installed."""
    shadow = tmp_path / "no-vastai"
    shadow.mkdir()
    (shadow / "vastai.py").write_text("raise ModuleNotFoundError(\"No module named 'vastai'\", name='vastai')\n")
    return {"PYTHONPATH": str(shadow)}


def test_no_modal_token_is_said_before_the_estimate_and_torch(tmp_path):
    out = gpujob_bare(tmp_path, "submit", "jobs/resnet18.yaml", "--gpu", "A10G:2", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 3, said(out)
    assert "no credentials; run `modal token new`" in said(out)
    assert "renting it on Modal" not in said(out)  # nothing is said of a rental that cannot happen
    assert not TORCH_IMPORTED.search(out.stderr), "torch was imported before the credentials were read"
    assert not (tmp_path / "runs").exists()


def test_vast_without_its_package_says_so_not_no_api_key(tmp_path):
    out = gpujob_bare(tmp_path, "submit", "jobs/resnet18.yaml", "--backend", "vast", "--gpu", "A10G:1",
                      "--set", "vast.image=docker.io/me/gpujob:1", "--dry-run", env=without_vastai(tmp_path))
    assert out.returncode == 3, said(out)
    assert "vastai package is not installed" in said(out) and "API key" not in said(out)
    assert not TORCH_IMPORTED.search(out.stderr)


def test_vast_with_no_gpu_type_is_bad_input_before_no_api_key(tmp_path):
    for extra in ((), ("--dry-run",)):
        out = gpujob_bare(tmp_path, "submit", "jobs/quickstart.yaml", "--backend", "vast", *extra)
        assert out.returncode == 2, said(out)
        assert "resources.gpu" in said(out) and "API key" not in said(out)
        assert not TORCH_IMPORTED.search(out.stderr)


def test_vast_without_a_key_is_said_before_torch(tmp_path):
    out = gpujob_bare(tmp_path, "submit", "jobs/resnet18.yaml", "--backend", "vast", "--gpu", "A10G:1",
                      "--set", "vast.image=docker.io/me/gpujob:1", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 3, said(out)
    assert "no API key" in said(out)
    assert not TORCH_IMPORTED.search(out.stderr)


@pytest.mark.parametrize("backend, said_first", [("docker", "docker: the docker command is not installed"),
                                                 ("slurm", "`scontrol` not found")])
def test_an_engine_missing_is_said_before_torch(tmp_path, backend, said_first):
    """Docker and SLURM: no engine or client commands on PATH (these held before issue 29 too)."""
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    out = gpujob_bare(tmp_path, "submit", "jobs/quickstart.yaml", "--backend", backend,
                      "--runs-dir", str(tmp_path / "runs"), env={"PATH": str(bare_path)})
    assert out.returncode == 3, said(out)
    assert said_first in said(out)
    assert not TORCH_IMPORTED.search(out.stderr)
    assert not (tmp_path / "runs").exists()
