"""The command as a user meets it: exit codes, one-line errors, a fast --help."""

import subprocess
import sys

from tests.conftest import REPO, cli, cli_subprocess


def test_help_does_not_import_torch():
    # `gpujob --help` must be instant: torch (seconds to import) is loaded only by commands that train.
    code = "import sys, runner.cli.main; sys.argv=['gpujob','--help']\ntry:\n runner.cli.main.main()\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported by --help'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "submit" in out.stdout and "validate" in out.stdout


def test_bad_spec_exits_2_with_one_line_and_no_traceback(write_spec):
    path = write_spec(train={"epochs": -1})
    out = cli_subprocess("submit", path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "train.epochs" in out.stderr and f"{path}:" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_unknown_option_and_missing_file_exit_2(tmp_path):
    assert cli_subprocess("submit", tmp_path / "nope.yaml").returncode == 2
    out = cli_subprocess("submit", "--no-such-flag", "x.yaml")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_a_backend_without_its_credentials_exits_3(write_spec):
    # A spec fit for vast.ai (a GPU type, an image it can pull): one that is not is refused first
    # (exit 2), before the key is read.
    spec = write_spec(resources={"gpu": "RTX4090:1"}, vast={"image": "docker.io/alice/gpujob:1"})
    out = cli_subprocess("submit", spec, "--backend", "vast", env={"VAST_API_KEY": ""})
    assert out.returncode == 3
    assert "vast" in out.stderr and "Traceback" not in out.stderr


def test_more_than_one_node_is_not_for_the_local_backend(write_spec, tmp_path):
    result = cli("submit", write_spec(resources={"nodes": 2}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.startswith("gpujob: resources.nodes:") and "--backend slurm" in result.stderr


def test_bad_backend_name_exits_2(write_spec):
    result = cli("submit", write_spec(), "--backend", "colab")
    assert result.exit_code == 2
    assert "backend" in result.stderr
