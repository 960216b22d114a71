"""The Docker image and the docker backend, for real where an engine runs here.

The image is built from a base made on this machine (images/base/build-base.sh: debootstrap +
`docker import`; no registry is reachable), with the host's CA bundle as the build's extra CA
(downloads go through a TLS-inspecting proxy). Then a tiny job runs in it and its artifacts are
checked on the host. Without a Docker engine those tests skip, saying so; the command and
exit-code tests below them run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backends.docker.backend import container_run, docker_run_command
from runner.backends.exit_codes import remote_exit_error
from runner.backends.docker.image import build_command, engine_available
from runner.spec.load import load_spec
from tests.conftest import REPO, TAG, _build, assert_golden, cli, cli_subprocess, read_jsonl, read_jsonl_if, wait_for

ARTIFACTS = ("spec.yaml", "metrics.jsonl", "summary.json", "timing.json", "loss_curve.png", "env.json", "model.pt")

needs_engine = pytest.mark.skipif(not engine_available(), reason="no Docker engine answers here "
                                  "(.ci/start-docker.sh starts one)")


def _digits_spec(write_spec, **overrides):
    sections = dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 64},
                    optimizer={"name": "adam", "lr": 0.01}, train={"epochs": 2, "log_every_steps": 5},
                    docker={"image": TAG})
    sections.update(overrides)
    return write_spec(**sections)


# ---- for real, in the engine -----------------------------------------------------------


@needs_engine
def test_a_job_runs_in_the_image_and_its_artifacts_land_on_the_host(image, write_spec, tmp_path):
    out = cli_subprocess("submit", _digits_spec(write_spec), "--backend", "docker", "--runs-dir", tmp_path / "runs",
                         timeout=600)
    assert out.returncode == 0, out.stderr + out.stdout[-2000:]
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "runs"  # the last line is the host's folder, not the container's /runs/...
    assert out.stdout.count("done: ") == 1 and "/runs/" + folder.name not in out.stdout.replace(str(folder), "")
    for name in ARTIFACTS:
        assert (folder / name).is_file(), name
        assert (folder / name).stat().st_uid == os.getuid()  # the user's files, not root's
    assert list((folder / "checkpoints").iterdir())
    env = json.loads((folder / "env.json").read_text())
    assert env["gpujob_image"] == TAG and env["torch"].startswith("2.")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_accuracy"] > 0.5
    # issue 26: the image writes TensorBoard events as a run here does, and TensorBoard reads them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    epochs = [r for r in read_jsonl(folder / "metrics.jsonl") if r["kind"] == "epoch"]
    test_losses = [e.value for e in events.Scalars("epoch/test_loss")]
    assert test_losses == pytest.approx([e["test_loss"] for e in epochs], rel=1e-5)


@needs_engine
def test_a_spec_error_inside_the_container_is_exit_2_with_one_line(image, write_spec, tmp_path):
    spec = _digits_spec(write_spec, data={"dataset": "mnist", "root": str(tmp_path / "data"), "download": False})
    out = cli_subprocess("submit", spec, "--backend", "docker", "--runs-dir", tmp_path / "runs", timeout=600)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("gpujob: docker: data.root") and "mnist" in last


@needs_engine
def test_a_job_past_its_time_limit_stops_with_a_checkpoint_and_exit_1_naming_its_folder(image, write_spec,
                                                                                       tmp_path):
    spec = _digits_spec(write_spec, model={"name": "cnn"}, resources={"timeout_minutes": 0.1},
                        train={"epochs": 100, "log_every_steps": 10})
    out = cli_subprocess("submit", spec, "--backend", "docker", "--runs-dir", tmp_path / "runs", timeout=300)
    assert out.returncode == 1, out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    said = next(line for line in out.stderr.splitlines() if line.startswith("gpujob: docker: "))
    assert said.startswith("gpujob: docker: the job failed (exit 1): the job ran past resources.timeout_minutes "
                           "(0.1 min) and was stopped at step "), said
    assert said.endswith(f"checkpoint saved; resume with: gpujob resume {run}"), "the folder as named here"
    assert f"/runs/{run.name}" not in out.stdout.replace(str(run), "") + out.stderr.replace(str(run), "")
    assert out.stdout.strip().splitlines()[-1] == str(run)
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "summary.json").exists()


@needs_engine
def test_ctrl_c_stops_the_container_after_a_checkpoint_and_is_exit_130_with_the_resume_hint(image, write_spec,
                                                                                           tmp_path):
    runs = tmp_path / "runs"
    spec = _digits_spec(write_spec, model={"name": "cnn"}, train={"epochs": 100, "log_every_steps": 10})
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "submit", str(spec), "--backend", "docker",
                             "--runs-dir", str(runs)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for(lambda: (runs.is_dir() and any(len(read_jsonl_if(run / "metrics.jsonl")) >= 2 for run in runs.iterdir()))
             or proc.poll() is not None, "the container's first steps", timeout=300)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)  # train.stop_grace_s (30 s) is what it may take
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    (run,) = runs.iterdir()
    assert stderr.strip().splitlines()[-1] == (f"gpujob: docker: interrupted; the job saved a checkpoint in {run}; "
                                               f"continue it with: gpujob resume {run}")
    assert stdout.strip().splitlines()[-1] == str(run)
    assert list((run / "checkpoints").glob("step-*.pt")), "the job saved a checkpoint before the container stopped"
    assert not (run / "summary.json").exists(), "the job was stopped, not left to run to its end"
    left = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"name=gpujob-{run.name}"], capture_output=True,
                          text=True)
    assert left.stdout.strip() == ""


@needs_engine
def test_the_image_is_lean_non_root_and_keeps_no_build_secret(image):
    config = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                                       text=True, check=True).stdout)[0]["Config"]
    assert config["User"] == "gpujob" and config["Entrypoint"] == ["gpujob", "run"]
    assert set(config["Volumes"]) == {"/runs", "/data"}
    # BuildKit leaves its mount points as empty folders; nothing may be in them.
    look = ("find /root/.cache /tmp/gpujob /run/secrets -type f 2>/dev/null | wc -l; "
            "for tool in gcc cc uv; do command -v $tool; done | wc -l; "
            "ls /opt/gpujob/bin | grep -c -E '^(pip|uv)'; test -x /usr/local/bin/gpujob-vast-start && echo vast-start")
    found = subprocess.run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", look],
                           capture_output=True, text=True, check=True).stdout.split()
    assert found == ["0", "0", "0", "vast-start"], found  # no caches, secrets, compilers or installers left
    history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True).stdout
    assert "BEGIN CERTIFICATE" not in history


# Run as root, so that Python could write any .pyc it finds missing or stale: none may appear.
# Then count, for torch and gpujob's own package, the source files that have their .pyc.
COMPILED = """
import importlib.util, pathlib, torch, torchvision, runner.cli, runner.training.loop, runner.launching.worker
for package in (torch, runner):
    sources = list(pathlib.Path(package.__file__).parent.rglob("*.py"))
    compiled = [s for s in sources if pathlib.Path(importlib.util.cache_from_source(s)).is_file()]
    print(len(sources), len(compiled))
"""


@needs_engine
def test_the_image_holds_bytecode_so_no_container_compiles_torch_again(image):
    look = f"touch /tmp/before && python -c '{COMPILED}' && find /opt/gpujob -name '*.pyc' -newer /tmp/before | wc -l"
    found = subprocess.run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", look],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    torch_files, runner_files, written = [line.split() for line in found.stdout.splitlines()]
    sources, compiled = map(int, torch_files)
    assert sources > 1000 and compiled >= sources - 5, torch_files  # a few are for newer Pythons only
    assert runner_files[0] == runner_files[1], runner_files
    assert written == ["0"], f"importing torch and gpujob compiled {written[0]} files in the container"


def test_the_default_base_brings_no_second_torch_stack():
    """A base whose torch is not the pinned one keeps its own, unused, in the image: GBs twice."""
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    pinned = re.search(r"^torch==([^ ;]+)", (REPO / "images" / "requirements.txt").read_text(), re.M).group(1)
    assert "torch" not in default or f":{pinned}-" in default, (default, pinned)


def _build_steps(output: str) -> dict[str, str]:
    """BuildKit's plain progress as {step: how it ended}: "#7 [stage-0 2/5] RUN ..." names step 7,
    "#7 CACHED" (or DONE, ERROR) says how it ended."""
    titles, ends = {}, {}
    for line in output.splitlines():
        if named := re.match(r"#(\d+) (\[.*)$", line):
            titles[named[1]] = named[2]
        elif ended := re.match(r"#(\d+) (CACHED|DONE|ERROR)\b", line):
            ends[ended[1]] = ended[2]
    return {title: ends.get(number, "unfinished") for number, title in titles.items()}


@needs_engine
def test_a_second_build_comes_from_the_cache(image):
    """The heavy step (installing the pinned torch stack, minutes uncached) is not run again."""
    out, seconds = _build()
    assert out.returncode == 0, out.stderr[-2000:]
    print(f"\ncached image build: {seconds:.1f} s")
    steps = _build_steps(out.stdout + out.stderr)
    deps = [end for title, end in steps.items() if "install.sh deps" in title]
    assert deps == ["CACHED"], f"the dependency install ran again: {deps}\n{out.stderr[-3000:]}"


# ---- the command, without an engine ------------------------------------------------------


def _spec(write_spec, **sections):
    return load_spec(write_spec(**sections))


def test_the_container_runs_the_same_worker_command_as_the_user(write_spec, tmp_path):
    spec = _spec(write_spec, data={"dataset": "fashion_mnist", "root": "data"})
    run = container_run(spec, tmp_path / "runs", nvidia=False, cwd=tmp_path)
    command = docker_run_command(run, "job-1", "/tmp/spec-dir", 1000, 100)
    assert command[-7:] == ["gpujob:latest", "/job/spec.yaml", "--run-dir", "/runs/job-1", "--nproc-per-node", "auto",
                            "--resume"]
    assert command[command.index("--user") + 1] == "1000:100" and "--ipc=host" in command and "--gpus" not in command
    volumes = [command[i + 1] for i, arg in enumerate(command) if arg == "--volume"]
    assert volumes == [f"{tmp_path / 'runs'}:/runs:rw", f"{tmp_path / 'data'}:/data:rw", "/tmp/spec-dir:/job:ro"]
    assert run.spec.data.root == "/data" and spec.data.root == "data"  # the container's view, not the user's spec


def test_gpus_go_to_the_container_only_with_nvidias_runtime(write_spec, tmp_path):
    spec = _spec(write_spec, resources={"gpu": "A10G:2"})
    assert container_run(spec, tmp_path, nvidia=True, cwd=tmp_path).gpus == "2"
    cpu = container_run(spec, tmp_path, nvidia=False, cwd=tmp_path)
    assert cpu.gpus is None and "running on the CPU" in cpu.note
    counted = _spec(write_spec, docker={"gpus": "3"})  # `--gpu 3`: no type, so one worker per GPU
    run = container_run(counted, tmp_path, nvidia=True, cwd=tmp_path)
    assert run.gpus == "3" and run.spec.resources.processes == 3
    assert "--gpus" in docker_run_command(run, "j", "/s", 0, 0)
    assert container_run(_spec(write_spec, docker={"gpus": "all"}), tmp_path, True, tmp_path).gpus == "all"


def test_a_card_the_images_torch_cannot_run_is_refused(write_spec, tmp_path):
    from runner.errors import GpujobError

    with pytest.raises(GpujobError) as err:
        container_run(_spec(write_spec, resources={"gpu": "V100:1"}), tmp_path, nvidia=True, cwd=tmp_path)
    assert err.value.exit_code == 2 and "V100 (compute capability 7.0) is too old" in err.value.message


def test_a_factory_in_the_spec_is_imported_from_the_runs_copy_of_the_code(write_spec, tmp_path):
    """Not this folder, mounted whole: the run's job/code (what runner/user_code.py ships), which
    the container sees at /job/code."""
    spec = _spec(write_spec, model={"name": "mypkg.models:build"})
    run = container_run(spec, tmp_path, nvidia=False, cwd=tmp_path)
    assert run.env["GPUJOB_SHIPPED_CODE"] == "/job/code" and "PYTHONPATH" not in run.env
    assert [inside for _, inside, _ in run.mounts] == ["/runs"]


@needs_engine
def test_the_users_own_model_data_and_step_run_in_the_container(image, tmp_path):
    """The regression example, submitted from another folder: the container imports the copy of
    its code in the run's job/code, and nothing else of this machine."""
    from tests.test_user_code import example

    spec = example(tmp_path, "regression", train={"epochs": 2}, docker={"image": TAG})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli_subprocess("submit", spec, "--backend", "docker", "--runs-dir", tmp_path / "runs", timeout=600,
                         cwd=elsewhere)
    assert out.returncode == 0, out.stderr + out.stdout[-2000:]
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert (folder / "job" / "code" / "gpujob_examples" / "regression.py").is_file()
    argv = json.loads((folder / "job" / "request.json").read_text())["argv"]
    assert not any(str(spec.parent) in arg for arg in argv)  # the spec's folder itself is not mounted
    last = [r for r in read_jsonl(folder / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert set(last["test_metrics"]) == {"mae"} and last["test_accuracy"] is None


def test_container_exit_codes_mean_what_local_ones_do(tmp_path):
    assert remote_exit_error(0, [], "docker", tmp_path) is None
    bad = remote_exit_error(2, ["training...", "gpujob: data.root: mnist not found"], "docker", tmp_path)
    assert bad.exit_code == 2 and bad.message == "docker: data.root: mnist not found"
    stopped = remote_exit_error(143, [], "docker", tmp_path)
    assert stopped.exit_code == 143 and f"gpujob resume {tmp_path}" in stopped.message
    failed = remote_exit_error(137, ["step 1", "Killed"], "docker", tmp_path)
    assert failed.exit_code == 1 and "Killed" in failed.message


def test_the_build_takes_the_base_and_the_ca_as_a_secret(tmp_path):
    command = build_command("me/gpujob:1", "gpujob-base:bookworm", tmp_path / "ca.pem", REPO)
    assert command[:4] == ["docker", "build", "--tag", "me/gpujob:1"]
    assert "BASE_IMAGE=gpujob-base:bookworm" in command and f"id=extra_ca,src={tmp_path / 'ca.pem'}" in command
    assert [arg for arg in command if "ca.pem" in arg] == [f"id=extra_ca,src={tmp_path / 'ca.pem'}"]


FAKE_DOCKER = """#!/bin/sh
# The docker CLI as an engine answers it. Each call goes to $FAKE_DIR/calls; FAKE_* pick the answers.
echo "$*" >> "$FAKE_DIR/calls"
case "$1" in
  info)  case "$*" in *Runtimes*) echo "$FAKE_RUNTIMES";; *) echo 20.10.24;; esac
         exit "${FAKE_INFO:-1}";;
  image) exit "${FAKE_IMAGE:-1}";;
  run)   if [ "${FAKE_RUN:-runs}" = runs ]; then
           # A container that runs until `docker stop` sends it SIGTERM (then it exits 143), or
           # ends by itself after 20 s: a test of a broken stop fails, it does not hang.
           echo $$ > "$FAKE_DIR/run.pid"; trap 'exit 143' TERM; echo "the job is running"
           i=0; while [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done; exit 0
         fi
         echo "docker: Error response from daemon: $FAKE_RUN" >&2; exit 125;;
  stop)  kill -TERM "$(cat "$FAKE_DIR/run.pid")"; exit 0;;
  inspect) # the container is running while `run` does; once it ended, --rm took it away
         kill -0 "$(cat "$FAKE_DIR/run.pid" 2>/dev/null)" 2>/dev/null && echo "running 0" && exit 0
         echo "Error: No such object" >&2; exit 1;;
  build) exit "${FAKE_BUILD:-0}";;
  push)  exit "${FAKE_PUSH:-0}";;
esac
exit 1
"""


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` command first on PATH: `info` answers with FAKE_INFO's code (its runtimes are
    FAKE_RUNTIMES), images are there when FAKE_IMAGE=0, `run` runs until stopped (or fails to
    start with FAKE_RUN's message), `inspect` says it runs while it does, `build` and `push` exit
    FAKE_BUILD and FAKE_PUSH; `calls()` lists the calls made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    return FakeDocker({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
                       "FAKE_RUNTIMES": '{"runc":{"path":"runc"}}'}, tmp_path / "calls")


class FakeDocker(dict):
    """The environment that puts the fake first on PATH (for cli_subprocess's env=)."""

    def __init__(self, env: dict, calls_file: Path):
        super().__init__(env)
        self.calls_file = calls_file

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def use(self, monkeypatch, **answers: str) -> None:
        """Put the fake in this process's environment, for the in-process `cli`."""
        for key, value in {**self, **answers}.items():
            monkeypatch.setenv(key, value)


def test_no_engine_is_exit_3_with_what_to_do(write_spec, fake_docker):
    out = cli_subprocess("submit", write_spec(), "--backend", "docker", env=fake_docker)
    assert out.returncode == 3 and out.stderr.strip().count("\n") == 0
    assert "start Docker (sudo systemctl start docker)" in out.stderr
    assert cli_subprocess("image", "build", env=fake_docker).returncode == 3


def test_a_missing_image_is_exit_3_naming_the_build_command(write_spec, fake_docker):
    out = cli_subprocess("submit", write_spec(), "--backend", "docker", env={**fake_docker, "FAKE_INFO": "0"})
    assert out.returncode == 3 and "gpujob image build --tag gpujob:latest" in out.stderr


def test_no_docker_command_is_exit_3_naming_what_to_install(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for args in (("submit", write_spec(), "--backend", "docker", "--runs-dir", tmp_path / "runs"), ("image", "build")):
        result = cli(*args)
        assert result.exit_code == 3, result.stderr
        assert result.stderr.strip() == ("gpujob: docker: the docker command is not installed; install Docker Engine "
                                         "(https://docs.docker.com/engine/install/)")
    assert not (tmp_path / "runs").exists()


def test_gpus_are_used_where_the_engine_has_nvidias_runtime_or_its_hook_is_installed(fake_docker, monkeypatch):
    from runner.backends.docker.image import nvidia_runtime_available

    bin_dir = Path(fake_docker["PATH"].split(os.pathsep)[0])
    fake_docker.use(monkeypatch, FAKE_INFO="0", PATH=str(bin_dir))  # only the fake: no NVIDIA tool of this host
    assert not nvidia_runtime_available()
    monkeypatch.setenv("FAKE_RUNTIMES", '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}')
    assert nvidia_runtime_available()
    monkeypatch.setenv("FAKE_RUNTIMES", '{"runc":{"path":"runc"}}')
    hook = bin_dir / "nvidia-container-runtime-hook"  # what `docker run --gpus` calls
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert nvidia_runtime_available()


def test_a_container_that_does_not_start_is_exit_1_with_dockers_reason(write_spec, tmp_path, fake_docker,
                                                                     monkeypatch):
    fake_docker.use(monkeypatch, FAKE_INFO="0", FAKE_IMAGE="0", FAKE_RUN="invalid mount config for type bind")
    result = cli("submit", _digits_spec(write_spec), "--backend", "docker", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.strip() == ("gpujob: docker: the container did not start: docker: Error response from "
                                     "daemon: invalid mount config for type bind")
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stdout.strip().splitlines()[-1] == str(run)  # the last line is the run folder, failed or not


def test_past_its_time_limit_the_container_is_stopped_and_it_is_exit_1(write_spec, tmp_path, fake_docker,
                                                                      monkeypatch):
    """The backstop for a job that does not stop itself (a hung start-up): past timeout_minutes
    and a grace of TIMEOUT_GRACE_S (2 min; none here), `docker stop` with train.stop_grace_s."""
    fake_docker.use(monkeypatch, FAKE_INFO="0", FAKE_IMAGE="0")
    monkeypatch.setattr("runner.backends.docker.backend.TIMEOUT_GRACE_S", 0)
    spec = _digits_spec(write_spec, resources={"timeout_minutes": 0.05}, train={"stop_grace_s": 7})
    started = time.monotonic()
    result = cli("submit", spec, "--backend", "docker", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.stderr
    assert 3 <= time.monotonic() - started < 30
    (run,) = (tmp_path / "runs").iterdir()
    assert f"stop --time 7 gpujob-{run.name}" in fake_docker.calls()
    assert result.stderr.strip() == ("gpujob: docker: the job ran past resources.timeout_minutes (0.05 min); the "
                                     f"container was stopped; its last checkpoint is in {run}")
    assert result.stdout.strip().splitlines()[-1] == str(run)


def test_resume_sends_the_recorded_docker_run_again_after_a_cancel(write_spec, tmp_path, fake_docker, monkeypatch):
    """job/request.json holds the `docker run` exactly as sent; cancel stops that container with
    train.stop_grace_s, and resume sends the very same `docker run` (its worker runs --resume)."""
    fake_docker.use(monkeypatch, FAKE_INFO="0", FAKE_IMAGE="0")
    submitted = cli("submit", _digits_spec(write_spec, train={"stop_grace_s": 9}), "--backend", "docker", "--detach",
                    "--runs-dir", tmp_path / "runs")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir
    sent = json.loads((run / "job" / "request.json").read_text())
    assert sent["container"] == f"gpujob-{run.name}" and sent["argv"][:2] == ["docker", "run"]
    assert not (run / "job" / "docker-run.json").exists()
    wait_for(lambda: any(call.startswith("run ") for call in fake_docker.calls()), "the container's start")
    assert cli("status", run).stdout.startswith(f"{run.name}: running: container gpujob-{run.name} is running")

    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and cancelled.stdout.startswith(f"cancelled {run.name}"), cancelled.stderr
    assert f"stop --time 9 gpujob-{run.name}" in fake_docker.calls()
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")

    resumed = cli("resume", run, "--detach")
    assert resumed.exit_code == 0, resumed.stderr
    wait_for(lambda: len([call for call in fake_docker.calls() if call.startswith("run ")]) == 2, "the second start")
    runs = [call for call in fake_docker.calls() if call.startswith("run ")]
    assert runs[0] == runs[1] == " ".join(sent["argv"][1:])
    assert cli("cancel", run).exit_code == 0  # nothing left running after the test


def test_a_failed_build_or_push_is_exit_1(fake_docker, monkeypatch):
    fake_docker.use(monkeypatch, FAKE_INFO="0", FAKE_BUILD="1")
    failed = cli("image", "build", "--tag", "gpujob:broken")
    assert failed.exit_code == 1 and "docker build failed (exit 1)" in failed.stderr
    fake_docker.use(monkeypatch, FAKE_INFO="0", FAKE_BUILD="0", FAKE_PUSH="1")
    refused = cli("image", "build", "--tag", "registry.example/me/gpujob:1", "--push")
    assert refused.exit_code == 1
    assert "docker push registry.example/me/gpujob:1 failed (exit 1); are you logged in" in refused.stderr
    assert [call.split()[0] for call in fake_docker.calls() if call.split()[0] in ("build", "push")] == \
        ["build", "build", "push"]


def test_a_push_without_a_registry_is_exit_2_before_anything_is_built(fake_docker, monkeypatch):
    fake_docker.use(monkeypatch, FAKE_INFO="0")
    result = cli("image", "build", "--tag", "gpujob:1", "--push")
    assert result.exit_code == 2 and "--push: gpujob:1 names no registry or account" in result.stderr
    assert not [call for call in fake_docker.calls() if call.startswith("build")]


def test_building_without_a_dockerfile_is_exit_2(tmp_path):
    """What `gpujob image build` says when gpujob is installed outside a checkout."""
    from runner.backends.docker.image import build_image
    from runner.errors import GpujobError

    with pytest.raises(GpujobError) as err:
        build_image("gpujob:1", context=tmp_path)
    assert err.value.exit_code == 2 and f"no Dockerfile in {tmp_path}" in err.value.message


def test_bad_build_and_gpu_options_are_exit_2(write_spec, tmp_path):
    assert cli_subprocess("image", "build", "--extra-ca", tmp_path / "nope.pem").returncode == 2
    out = cli_subprocess("submit", write_spec(), "--gpu", "2")  # a bare count is for --backend docker
    assert out.returncode == 2 and "--backend docker" in out.stderr


def test_the_docker_run_sent_is_the_recorded_one(write_spec):
    """Golden file: a change to what is sent to the engine shows in review."""
    spec = _spec(write_spec, data={"dataset": "fashion_mnist", "root": "data"}, model={"name": "pkg.models:net"},
                 resources={"gpu": "A10G:2"})
    run = container_run(spec, Path("/home/me/project/runs"), nvidia=True, cwd=Path("/home/me/project"))
    command = docker_run_command(run, "golden-20260101-000000", "/home/me/project/runs/golden-20260101-000000/job",
                                 1000, 1000)
    assert_golden("docker_run.txt", "\n".join(command) + "\n")


@needs_engine
def test_detach_status_logs_cancel_and_resume_in_docker(image, write_spec, tmp_path):
    runs = tmp_path / "runs"
    spec = _digits_spec(write_spec, model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                        train={"epochs": 100, "max_steps": 1600, "log_every_steps": 10})
    submitted = cli_subprocess("submit", spec, "--backend", "docker", "--detach", "--runs-dir", runs, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    run = Path(submitted.stdout.strip().splitlines()[-1])
    run = run if run.is_absolute() else tmp_path / run
    handles = json.loads((run / "submission.json").read_text())["handles"]
    assert handles["container"] == f"gpujob-{run.name}"
    wait_for(lambda: len(read_jsonl_if(run / "metrics.jsonl")) >= 3, "the container's steps", timeout=300)
    # While it surely runs (a loaded machine's one thread per worker trains fast): 1600 steps, and
    # the refused resume first.
    assert cli_subprocess("resume", run).returncode == 2  # live: never a second container on one folder
    assert cli_subprocess("status", run).stdout.startswith(f"{run.name}: running: in container gpujob-{run.name}")
    assert "step 10/1600" in cli_subprocess("logs", run).stdout  # the container's output, in job/output.log

    cancelled = cli_subprocess("cancel", run)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "summary.json").exists()
    assert cli_subprocess("status", run).stdout.startswith(f"{run.name}: cancelled")
    gone = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"name=gpujob-{run.name}"], capture_output=True,
                          text=True)
    assert gone.stdout.strip() == ""

    resumed = cli_subprocess("resume", run, cwd=tmp_path, timeout=600)  # the same docker run again, --resume inside
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["steps"] == 1600
    steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl") if m["kind"] == "step"]
    assert steps == sorted(set(steps))
    assert cli_subprocess("status", run).stdout.startswith(f"{run.name}: finished")
