"""More than one machine, for real: SLURM jobs over two nodes, and nodes started by hand.

The nodes are .ci/start-slurm-nodes.sh's: two slurmds under this machine's slurmctld, each in its
own network namespace with its own hostname and address (partition `multi`); this machine's file
system is their shared one. `gpujob run` is started "on" a node with .ci/on-node.sh. Jobs are
small (digits, a few hundred steps): two cores run both nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runner.training.checkpoint import CheckpointStore
from runner.runs.record import read as read_record
from tests.conftest import REPO, cli, cli_subprocess, read_jsonl, read_jsonl_if, requeue_now, wait_for

LOSS_TOLERANCE = 1e-4  # DDP against the same world size on one machine, as tests/test_ddp.py
TRAIN = dict(model={"name": "mlp"}, data={"dataset": "digits", "batch_size": 32},
             optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
             train={"epochs": 1, "log_every_steps": 10, "seed": 3}, slurm={"partition": "multi"})
# Long enough to act on mid-run on a loaded machine; checkpoints every few seconds.
LONG = dict(TRAIN, model={"name": "cnn"}, resources={"nodes": 2, "processes": 1},
            train={"epochs": 100, "max_steps": 300, "log_every_steps": 10, "seed": 3,
                   "checkpoint_every_minutes": 0.05, "collective_timeout_s": 20})


def _spec(folder: Path, name: str, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **sections}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """local_run(workers): TRAIN run by that many local workers (once per module): what the same
    world size over two nodes must equal."""
    done: dict[int, Path] = {}

    def run(workers: int) -> Path:
        if workers not in done:
            folder = tmp_path_factory.mktemp(f"local{workers}")
            result = cli("submit", _spec(folder, "local", **TRAIN), "--set", f"resources.processes={workers}",
                         "--runs-dir", folder / "runs")
            assert result.exit_code == 0, result.stderr
            done[workers] = result.run_dir
        return done[workers]

    return run


def _curve(run: Path) -> list[tuple[str, int, float]]:
    return [(m["kind"], m["step"], m["loss"]) for m in read_jsonl(run / "metrics.jsonl")]


def _assert_same_losses(run: Path, reference: Path) -> None:
    ours, theirs = _curve(run), _curve(reference)
    assert [(k, s) for k, s, _ in ours] == [(k, s) for k, s, _ in theirs]
    assert [loss for *_, loss in ours] == pytest.approx([loss for *_, loss in theirs], rel=LOSS_TOLERANCE)
    a, b = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=LOSS_TOLERANCE) and a["world_size"] == b["world_size"]


def _steps(run: Path) -> list[int]:
    return [m["step"] for m in read_jsonl_if(run / "metrics.jsonl") if m["kind"] == "step"]


def _gpujob_on(node: str) -> list[str]:
    """gpujob's processes still alive in a node's network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout.split()
    alive = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "runner.cli" in command:
            alive.append(f"{pid} {command}")
    return alive


def _kill_worker_on(node: str, run: Path) -> int:
    """SIGKILL the training process of `run` on `node` (not its shell: srun sees the worker die)."""
    ns = Path(f"/run/netns/{node}").stat().st_ino
    for line in subprocess.run(["pgrep", "-af", f"runner.cli run .*--run-dir {run}"], capture_output=True,
                               text=True).stdout.splitlines():
        pid = int(line.split()[0])
        try:
            if Path(f"/proc/{pid}/ns/net").stat().st_ino == ns and Path(f"/proc/{pid}/comm").read_text() != "bash\n":
                subprocess.run(["kill", "-KILL", str(pid)])
                return pid
        except OSError:
            continue
    raise AssertionError(f"no worker of {run} on {node}")


def _submit_in_background(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ---- SLURM: resources.nodes: 2 -------------------------------------------------------------

@pytest.mark.parametrize("per_node", [1, 2])
def test_two_slurm_nodes_train_like_the_same_workers_on_one_machine(tmp_path, slurm_nodes, local_run, per_node):
    node0, node1 = slurm_nodes
    spec = _spec(tmp_path, f"nodes-x{per_node}", **dict(TRAIN, resources={"nodes": 2, "processes": per_node}))
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run, world = result.run_dir, 2 * per_node
    _assert_same_losses(run, local_run(world))
    # Every rank joined, node 1's as well, and their output came back labelled with their rank.
    shown = result.stdout.splitlines()
    assert f"gpujob-worker: joined the job (rank 0 of {world})" in shown
    for rank in range(1, world):
        assert f"[rank {rank}] gpujob-worker: joined the job (rank {rank} of {world})" in shown
    assert {(run / "job" / f"rank-{r}.exit").read_text().split()[1] for r in range(world)} == {node0, node1}
    code, node, _ended, signals = (run / "job" / f"rank-{world - 1}.exit").read_text().split()
    assert (code, node, signals) == ("0", node1, "-"), "exit 0 on node 1, sent no signal"
    # Only node 0 (rank 0) writes the run: its environment and its lock name node 0.
    assert json.loads((run / "env.json").read_text())["hostname"] == node0
    assert json.loads((run / ".lock").read_text())["host"] == node0


def test_each_slurm_node_samples_its_own_devices_into_the_shared_run_folder(tmp_path, slurm_nodes, monkeypatch):
    """Node 1's first worker samples node 1 (its own file), rank 0 node 0; the summary has both."""
    node0, node1 = slurm_nodes
    monkeypatch.setenv("GPUJOB_SAMPLE_EVERY_S", "0.2")  # sbatch's --export=ALL takes it to both nodes
    spec = _spec(tmp_path, "sampled", **dict(TRAIN, train={**TRAIN["train"], "epochs": 3},
                                             resources={"nodes": 2, "processes": 1}))
    result = cli("submit", spec, "--backend", "slurm", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    run = result.run_dir
    assert {s["node"] for s in read_jsonl(run / "utilisation.jsonl")} == {node0}
    assert {s["node"] for s in read_jsonl(run / f"utilisation-{node1}.jsonl")} == {node1}
    utilisation = json.loads((run / "summary.json").read_text())["utilisation"]
    assert set(utilisation["nodes"]) == {node0, node1}
    assert all(n["samples"] >= 1 and n["devices"] == 1 for n in utilisation["nodes"].values())
    assert utilisation["devices"] == 2


def test_a_dead_node_fails_the_job_naming_it_and_cancel_and_resume_finish_the_run(tmp_path, slurm_nodes):
    """--detach, status, logs, cancel; resume; one node's worker killed mid-run; resume to the end."""
    node0, node1 = slurm_nodes
    runs = tmp_path / "runs"
    submitted = cli("submit", _spec(tmp_path, "two-nodes", **LONG), "--backend", "slurm", "--detach",
                    "--runs-dir", runs)
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.run_dir.resolve()
    job_id = read_record(run).handles["slurm_job_id"]
    wait_for(lambda: len(_steps(run)) >= 3, "the two-node job's steps")
    assert cli("status", run).stdout.startswith(f"{run.name}: running: SLURM job {job_id}")
    logs = cli("logs", run).stdout
    assert "training on cpu x2" in logs and "[rank 1] gpujob-worker: joined the job (rank 1 of 2)" in logs
    cancelled = cli("cancel", run)
    assert cancelled.exit_code == 0 and f"SLURM job {job_id}" in cancelled.stdout, cancelled.stderr
    assert CheckpointStore(run).paths(), "the workers checkpointed before the job was cancelled"
    assert cli("status", run).stdout.startswith(f"{run.name}: cancelled")
    assert _gpujob_on(node0) == [] and _gpujob_on(node1) == []

    # Resumed (attached), node 1's worker dies mid-run: the job ends at once, naming it.
    resumed = _submit_in_background("resume", run)
    kept = _steps(run)[-1]
    wait_for(lambda: max(_steps(run), default=0) >= kept + 20 or resumed.poll() is not None, "the resumed steps")
    assert resumed.poll() is None, f"the resume ended before its steps: {resumed.communicate()}"
    before = CheckpointStore(run).paths()[0].name
    _kill_worker_on(node1, run)
    killed_at = time.monotonic()
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 1, (resumed.returncode, stderr, stdout[-3000:])
    assert time.monotonic() - killed_at < LONG["train"]["collective_timeout_s"] + 10
    said = [line for line in stderr.splitlines() if line.startswith("gpujob: slurm job")]
    assert len(said) == 1 and said[0].startswith(
        f"gpujob: slurm job {read_record(run).handles['slurm_job_id']}: rank 1 of 2 on node {node1} was killed by "
        "SIGKILL, not by gpujob"), stderr
    assert f"continue it with: gpujob resume {run}" in said[0] and "Traceback" not in stderr
    assert before in [path.name for path in CheckpointStore(run).paths()], "the checkpoint from before is kept"
    wait_for(lambda: _gpujob_on(node0) == [] and _gpujob_on(node1) == [], "no gpujob process left on either node", 30)

    finished = cli_subprocess("resume", run, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == LONG["train"]["max_steps"]
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == LONG["train"]["max_steps"], "every step logged once"
    assert cli("status", run).stdout.startswith(f"{run.name}: finished")


def test_a_requeued_two_node_job_resumes_into_the_same_folder(tmp_path, slurm_nodes):
    """What SLURM does to a preempted job: SIGTERM, back in the queue, started again on both nodes."""
    runs = tmp_path / "runs"
    proc = _submit_in_background("submit", _spec(tmp_path, "requeued", **LONG), "--backend", "slurm",
                                 "--runs-dir", runs)
    wait_for(lambda: (runs.is_dir() and any(runs.iterdir())) or proc.poll() is not None, "the run folder")
    (run,) = runs.iterdir()
    wait_for(lambda: len(_steps(run)) >= 5 or proc.poll() is not None, "the job's first steps")
    assert proc.poll() is None, proc.stderr.read()
    job_id = read_record(run).handles["slurm_job_id"]
    requeue_now(job_id, run)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(run.resolve())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["steps"] == LONG["train"]["max_steps"]
    steps = _steps(run)
    assert steps == list(range(10, LONG["train"]["max_steps"] + 1, 10)), "every step logged once"


# ---- nodes started by hand: `gpujob run --nnodes 2` in each namespace ------------------------

def _on_node(node: str, *args) -> subprocess.Popen:
    """`gpujob ARGS` on one of the namespaced nodes, as on another machine (.ci/on-node.sh)."""
    return subprocess.Popen([str(REPO / ".ci" / "on-node.sh"), node, sys.executable, "-m", "runner.cli",
                             *map(str, args)], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _hand_started(spec: Path, tmp_path: Path, addresses: tuple[str, str], port: int, nodes: tuple[str, str]):
    common = ["--nnodes", 2, "--nproc-per-node", 1, "--master-port", port]
    procs = [_on_node(node, "run", spec, *common, "--node-rank", rank, "--master-addr", address,
                      "--runs-dir", tmp_path / f"node{rank}")
             for rank, (node, address) in enumerate(zip(nodes, addresses))]
    outputs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outputs)]


def test_two_nodes_started_by_hand_train_like_two_workers_on_one(tmp_path, slurm_nodes, local_run):
    spec = _spec(tmp_path, "by-hand", **TRAIN)
    (code0, out0, err0), (code1, out1, err1) = _hand_started(spec, tmp_path, (slurm_nodes[0],) * 2, 29601,
                                                             slurm_nodes)
    assert (code0, code1) == (0, 0), err0 + err1
    run = Path(out0.strip().splitlines()[-1])
    assert run.parent == tmp_path / "node0" and not (tmp_path / "node1").exists(), "only node 0 writes a run folder"
    _assert_same_losses(run, local_run(2))
    assert json.loads((run / "env.json").read_text())["hostname"] == slurm_nodes[0]


def test_nodes_started_by_hand_with_one_run_dir_each_sample_their_own_devices(tmp_path, slurm_nodes, monkeypatch):
    """Node 1's launcher gives its first worker the --run-dir it was given (the shared folder) to sample into."""
    monkeypatch.setenv("GPUJOB_SAMPLE_EVERY_S", "0.2")  # on-node.sh passes the environment on
    spec, run = _spec(tmp_path, "sampled-by-hand", **dict(TRAIN, train={**TRAIN["train"], "epochs": 3})), tmp_path / "run"
    procs = [_on_node(node, "run", spec, "--nnodes", 2, "--nproc-per-node", 1, "--master-port", 29604,
                      "--node-rank", rank, "--master-addr", slurm_nodes[0], "--run-dir", run)
             for rank, node in enumerate(slurm_nodes)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert {s["node"] for s in read_jsonl(run / f"utilisation-{slurm_nodes[1]}.jsonl")} == {slurm_nodes[1]}
    utilisation = json.loads((run / "summary.json").read_text())["utilisation"]
    assert set(utilisation["nodes"]) == set(slurm_nodes)


def test_a_wrong_master_addr_and_a_node_that_never_comes_end_both_nodes_in_one_line(tmp_path, slurm_nodes):
    """Node 0 waits for a node 1 that looks for it at the wrong address: each gives up within
    train.collective_timeout_s (the rendezvous timeout), says why in one line, and leaves nothing."""
    timeout_s = 8
    spec = _spec(tmp_path, "lost", **dict(TRAIN, train={"collective_timeout_s": timeout_s}))
    started = time.monotonic()
    wrong = "10.213.77.1"  # this machine's end of node 1's link: reachable, and nobody listens there
    (code0, out0, err0), (code1, out1, err1) = _hand_started(spec, tmp_path, (slurm_nodes[0], wrong), 29602,
                                                             slurm_nodes)
    assert time.monotonic() - started < timeout_s + 30, "ended by the rendezvous timeout, not a hang"
    assert (code0, code1) == (1, 1), err0 + err1
    node0 = [line for line in err0.splitlines() if "waiting for" not in line]
    node1 = [line for line in err1.splitlines() if "waiting for" not in line]
    assert node0 == [f"gpujob: node 0 of 2: the other 1 node(s) did not join at {slurm_nodes[0]}:29602 within "
                     f"{timeout_s} s (train.collective_timeout_s); start `gpujob run` on each with --nnodes 2 "
                     f"--master-addr {slurm_nodes[0]} --master-port 29602"], err0
    assert node1 == [f"gpujob: node 1 of 2 could not reach node 0 at {wrong}:29602 within {timeout_s} s "
                     "(train.collective_timeout_s); check --master-addr and --master-port (node 0's address, "
                     "reachable from here) and that node 0 is running"], err1
    assert out0 == out1 == ""
    assert not any((tmp_path / "node0").iterdir()), "no run folder for a job that never started"


def test_a_port_in_use_on_node_0_is_one_line_at_once(tmp_path, slurm_nodes):
    spec = _spec(tmp_path, "busy", **TRAIN)
    listener = subprocess.Popen([str(REPO / ".ci" / "on-node.sh"), slurm_nodes[0], sys.executable, "-c",
                                 "import socket, sys, time; s = socket.socket(); s.bind(('', 29603)); s.listen(); "
                                 "print('listening', flush=True); time.sleep(120)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        node0 = _on_node(slurm_nodes[0], "run", spec, "--nnodes", 2, "--node-rank", 0, "--master-addr",
                         slurm_nodes[0], "--master-port", 29603, "--runs-dir", tmp_path / "runs")
        out, err = node0.communicate(timeout=60)
    finally:
        listener.kill()
        listener.wait()
    assert node0.returncode == 2 and out == ""
    assert err.splitlines() == ["gpujob: --master-port: port 29603 is already in use on this machine, node 0, where "
                                "rank 0 listens for the other ranks; stop what uses it, or give every node another "
                                "--master-port"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, said", [
    (["--nnodes", "0"], "--nnodes: expected the number of machines in the job (1 or more), got '0'"),
    (["--nnodes", "two"], "--nnodes: expected the number of machines in the job (1 or more), got 'two'"),
    (["--nnodes", "2", "--node-rank", "2"], "--node-rank: expected this machine's index among --nnodes 2: 0 .. 1, "
                                            "got '2'"),
    (["--nnodes", "2", "--node-rank", "-1"], "--node-rank: expected this machine's index among --nnodes 2: 0 .. 1, "
                                             "got '-1'"),
    (["--nnodes", "2", "--master-port", "65536"], "--master-port: expected a port number, 1-65535, got '65536'"),
    (["--nnodes", "2", "--node-rank", "1", "--master-addr", "no-such-node.invalid"],
     "--master-addr: 'no-such-node.invalid' is not an address or a name this machine can resolve; give node 0's "
     "address, reachable from every node"),
])
def test_node_options_that_cannot_work_are_one_line_exit_2(write_spec, tmp_path, args, said):
    result = cli("run", write_spec(**TRAIN), *args, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.stderr.splitlines() == [f"gpujob: {said}"], result.stderr
    assert result.stdout == "" and not (tmp_path / "runs").exists()
