"""What a newcomer expected of the command line and did not find (issue 29): hints they can run as
they invoked gpujob, `gpujob check`, `gpujob runs rm`, `resume --set train.epochs=N` and
`gpujob init`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner import invocation
from runner.backends.docker.backend import DockerBackend
from runner.cli.main import app
from runner.runs import record as run_record
from runner.runs.folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
GPUJOB = Path(sys.executable).parent / "gpujob"  # the console script uv installed in the environment


def _env_without_uv() -> dict:
    """The environment of a shell where nothing was started by `uv run`."""
    env = {k: v for k, v in os.environ.items() if k not in (invocation.UV_RUN, invocation.INVOKED_AS, "UV")}
    env["PATH"] = os.pathsep.join([str(GPUJOB.parent), env.get("PATH", "")])
    return env


def _unfinished_run(tmp_path: Path) -> Path:
    return RunFolder.start(tmp_path / "runs" / "half", run_record.new_submission("local", "half")).path


# ---- 1. hints as invoked ------------------------------------------------------------------------


def test_under_uv_run_the_gpujob_script_says_uv_run_and_otherwise_not():
    assert invocation.detected("/x/.venv/bin/gpujob", {invocation.UV_RUN: "1", "VIRTUAL_ENV": "/x/.venv"}) == "uv run"
    # `uv tool install`'s gpujob is on PATH: plain, even when a `uv run` shell started it
    assert invocation.detected("/home/u/.local/bin/gpujob", {invocation.UV_RUN: "1", "VIRTUAL_ENV": "/x/.venv"}) == ""
    assert invocation.detected("/x/.venv/bin/gpujob", {}) == ""
    assert invocation.detected("/x/runner/cli/__main__.py", {invocation.UV_RUN: "1"}) == ""  # python -m runner.cli


@pytest.mark.parametrize("prefix, expected", [("uv run", "uv run gpujob"), ("", "gpujob")])
def test_every_kind_of_hint_goes_through_one_prefix(monkeypatch, tmp_path, prefix, expected):
    from runner.backends.modal.service import NO_CREDENTIALS
    from runner.backends.vast.api import NO_API_KEY
    from runner.runs.state import resume_hint

    monkeypatch.setenv(invocation.INVOKED_AS, prefix)
    folder = _unfinished_run(tmp_path)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "step-00000010.pt").write_bytes(b"x")
    assert resume_hint(folder) == f"last checkpoint step-00000010.pt; continue it with: {expected} resume {folder}"
    said_modal = invocation.commands_in(NO_CREDENTIALS)
    said_vast = invocation.commands_in(NO_API_KEY)
    assert f"`{prefix + ' ' if prefix else ''}modal token new`" in said_modal
    assert f"`{prefix + ' ' if prefix else ''}vastai set api-key KEY`" in said_vast
    out = CliRunner().invoke(app, ["show", str(folder)])
    assert out.exit_code == 2
    assert f"`{expected} status {folder}` says where it stands" in out.stderr


def test_a_run_started_by_uv_run_gpujob_is_told_uv_run_gpujob(tmp_path):
    folder = _unfinished_run(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in (invocation.UV_RUN, invocation.INVOKED_AS)}
    out = subprocess.run(["uv", "run", "--frozen", "--all-extras", "gpujob", "show", str(folder)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"`uv run gpujob status {folder}`" in out.stderr


def test_an_installed_gpujob_is_told_plain_gpujob(tmp_path):
    folder = _unfinished_run(tmp_path)
    out = subprocess.run([str(GPUJOB), "show", str(folder)], env=_env_without_uv(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"`gpujob status {folder}`" in out.stderr and "uv run" not in out.stderr


# ---- 2. gpujob check ----------------------------------------------------------------------------

_CHECK = ("import sys, runner.cli.main as m\nsys.argv = ['gpujob', 'check']\ntry:\n    m.main()\nexcept SystemExit as e:\n"
          "    code = e.code\nprint('exit', code, 'torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")


def _check(tmp_path: Path, tools: dict[str, str], **env) -> tuple[dict[str, str], str]:
    """`gpujob check` in a fresh process, HOME a new folder, PATH holding only `tools` (name ->
    what it runs: a real program's path, or a script)."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    for name, target in tools.items():
        tool = bin_dir / name
        if Path(target).is_absolute():
            tool.symlink_to(target)
        else:
            tool.write_text(f"#!/bin/sh\n{target}\n")
            tool.chmod(0o755)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MODAL_", "VAST_", "XDG_CONFIG")) and k not in (invocation.UV_RUN, invocation.INVOKED_AS)}
    out = subprocess.run([sys.executable, "-c", _CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**clean, "HOME": str(home), "PATH": str(bin_dir), **env})
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
    return lines, out.stderr


def test_check_says_what_each_backend_lacks_on_a_bare_machine_without_importing_torch(tmp_path):
    lines, said = _check(tmp_path, {})
    assert "exit 0 no torch" in said, said
    assert list(lines) == ["local", "modal", "docker", "vast", "slurm"]  # one line each, in `backend: auto`'s order
    assert lines["local"] == "ready"
    assert lines["modal"].startswith("not ready: no credentials; run `modal token new`")
    assert lines["docker"].startswith("not ready: the docker command is not installed")
    assert lines["vast"].startswith("not ready: no API key; run `vastai set api-key KEY`")
    assert lines["slurm"].startswith("not ready: `sbatch` not found")


def test_check_says_ready_once_tokens_keys_and_commands_are_there(tmp_path):
    lines, said = _check(tmp_path, {"sbatch": "exit 0", "rsync": "exit 0", "ssh": "exit 0"},
                         MODAL_TOKEN_ID="ak-x", MODAL_TOKEN_SECRET="as-x", VAST_API_KEY="k")
    assert "exit 0 no torch" in said, said
    assert lines["modal"] == lines["vast"] == lines["slurm"] == "ready"
    assert lines["docker"].startswith("not ready: the docker command is not installed")


def test_check_asks_the_backends_own_readiness():
    """A backend says what it lacks through the base class; the command names none of them."""
    from runner.backends import registry

    restore = registry.provide(_Lacking())
    try:
        out = CliRunner().invoke(app, ["check"])
    finally:
        restore()
    assert out.exit_code == 0
    assert "docker  not ready: a planted lack" in out.stdout


class _Lacking(DockerBackend):
    def readiness(self):
        return "a planted lack"


# ---- 3. gpujob runs rm --------------------------------------------------------------------------


def _ended_run(runs: Path, name: str) -> Path:
    folder = RunFolder.start(runs / name, run_record.new_submission("local", name)).path
    (folder / "job").mkdir(exist_ok=True)
    (folder / "job" / "exit-code").write_text("1\n")  # its job ran and ended (failed)
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return folder


def _holding_the_lock(folder: Path) -> subprocess.Popen:
    """A process that runs the job as a trainer does: it holds the run's lock until it is ended."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom runner.runs import lock\n"
                               "lock.acquire(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(600)\n", str(folder)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_runs_rm_removes_ended_runs_and_says_so(tmp_path):
    runs = tmp_path / "runs"
    old, older = _ended_run(runs, "old"), _ended_run(runs, "older")
    out = CliRunner().invoke(app, ["runs", "rm", "old", str(older), "old", "--runs-dir", str(runs)])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [f"removed {runs / 'old'}", f"removed {older}"]
    assert not old.exists() and not older.exists()
    listed = CliRunner().invoke(app, ["runs", "--runs-dir", str(runs), "--json"])  # `gpujob runs` lists as before
    assert listed.exit_code == 0 and listed.stdout.strip() == "[]"


def test_runs_rm_never_touches_a_live_run_nor_the_others_named_with_it(tmp_path):
    runs = tmp_path / "runs"
    live, ended = _ended_run(runs, "live"), _ended_run(runs, "ended")
    holder = _holding_the_lock(live)
    before = _contents(live)
    try:
        out = CliRunner().invoke(app, ["runs", "rm", str(ended), str(live)])
        assert _contents(live) == before
    finally:
        holder.kill()
        holder.wait()
    assert out.exit_code == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert f"{live} is still running" in out.stderr and "not removing it" in out.stderr
    assert ended.is_dir()  # nothing at all is removed when one of them is refused


def test_runs_rm_refuses_a_folder_gpujob_did_not_make(tmp_path):
    mine = tmp_path / "runs" / "notes"
    mine.mkdir(parents=True)
    (mine / "todo.txt").write_text("keep me")
    out = CliRunner().invoke(app, ["runs", "rm", str(mine)])
    assert out.exit_code == 2
    assert "not a gpujob run (no submission.json)" in out.stderr
    assert (mine / "todo.txt").read_text() == "keep me"


# ---- 4. resume --set train.epochs=N -------------------------------------------------------------


def _digits_run(tmp_path: Path, epochs: int) -> Path:
    import yaml

    spec = tmp_path / "small.yaml"
    spec.write_text(yaml.safe_dump({"name": "small", "model": {"name": "mlp"},
                                    "data": {"dataset": "digits", "batch_size": 64},
                                    "train": {"epochs": epochs, "log_every_steps": 10}}))
    out = CliRunner().invoke(app, ["submit", str(spec), "--backend", "local", "--runs-dir", str(tmp_path / "runs")])
    assert out.exit_code == 0, out.output
    return Path(out.stdout.strip().splitlines()[-1])


def _epochs_recorded(folder: Path) -> list[int]:
    from runner.runs.reading import metrics_records

    return [r["epoch"] for r in metrics_records(folder / "metrics.jsonl") if r.get("kind") == "epoch"]


def test_a_finished_run_trains_on_to_more_epochs_from_its_checkpoint(tmp_path):
    import json

    folder = _digits_run(tmp_path, epochs=2)
    first = json.loads((folder / "summary.json").read_text())
    out = CliRunner().invoke(app, ["resume", str(folder), "--set", "train.epochs=3"])
    assert out.exit_code == 0, out.output
    assert "resuming from step" in out.stderr  # from its last checkpoint, not from the start
    assert _epochs_recorded(folder) == [1, 2, 3]
    assert json.loads((folder / "summary.json").read_text())["epochs"] == 3
    assert json.loads((folder / "job" / "summary-2-epochs.json").read_text()) == first  # the shorter run's, kept
    assert "epochs: 3" in (folder / "spec.yaml").read_text()
    status = CliRunner().invoke(app, ["status", str(folder)])
    assert status.stdout.startswith(f"{folder.name}: finished")


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    return _digits_run(tmp_path_factory.mktemp("one-epoch"), epochs=1)


@pytest.mark.parametrize("given, field", [
    ("model.name=cnn", "--set model.name"),
    ("optimizer.lr=0.1", "--set optimizer.lr"),
    ("train.epochs=1", "--set train.epochs=1: the run has done 1 epoch(s)"),
])
def test_resume_set_refuses_anything_but_a_longer_run_naming_the_field(one_epoch_run, given, field):
    folder = one_epoch_run
    before = _contents(folder)
    out = CliRunner().invoke(app, ["resume", str(folder), "--set", given])
    assert out.exit_code == 2
    assert out.stderr.startswith(f"gpujob: {field}") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""  # a refused resume names no run folder
    assert _contents(folder) == before


# ---- 5. gpujob init -----------------------------------------------------------------------------


def test_init_writes_a_job_that_passes_its_dry_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["init", "mynet"])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[:3] == ["wrote mynet.yaml", "wrote mynet_job.py",
                                           "check it: gpujob submit mynet.yaml --dry-run"]
    dry = CliRunner().invoke(app, ["submit", "mynet.yaml", "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert dry.exit_code == 0, dry.output
    assert "mynet_job:model: 771 parameters" in dry.stdout and "dry run: nothing was submitted" in dry.stdout
    assert "mynet_job:dataset (loaded" in dry.stdout


def test_init_never_overwrites_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet_job.py").write_text("# mine\n")
    out = CliRunner().invoke(app, ["init", "mynet"])
    assert out.exit_code == 2
    assert out.stderr.strip() == f"gpujob: {tmp_path / 'mynet_job.py'} exists; gpujob init never overwrites a file: " \
                                 "pick another NAME"
    assert (tmp_path / "mynet_job.py").read_text() == "# mine\n"
    assert not (tmp_path / "mynet.yaml").exists()  # nothing half-written


def test_init_refuses_a_name_that_cannot_be_a_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["init", "my-net"])
    assert out.exit_code == 2 and out.stderr.startswith("gpujob: NAME: 'my-net' must be a Python name")
    assert list(tmp_path.iterdir()) == []


def test_runs_rm_keeps_a_run_whose_rented_machine_still_bills(tmp_path):
    runs = tmp_path / "runs"
    rented = _ended_run(runs, "rented")
    run_record.update(rented, backend="vast", handles={"vast_instance_id": 4242})
    out = CliRunner().invoke(app, ["runs", "rm", str(rented)])  # vast.ai is not asked: the record says it
    assert out.exit_code == 2
    assert "vast.ai instance 4242 is not destroyed yet" in out.stderr and f"gpujob fetch {rented}" in out.stderr
    assert rented.is_dir()
