"""Which GPU, how fast, at what cost, and why: `gpujob compare`, `show`, `gpus`, `plan`, the
diagnosis every run gets, and the figures in summary.json and timing.json they stand on.

CPU figures come from short real runs (1 and 2 workers); GPU figures from run folders written as
a GPU run writes them (this machine has no GPU)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.conftest import cli, cli_subprocess


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    """Three real finished runs: digits CNN at 1 and 2 workers, and 1 worker at another batch size."""
    import yaml

    root = tmp_path_factory.mktemp("reports")

    def run(name, processes, batch):
        spec = root / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({
            "name": name, "model": {"name": "cnn"}, "data": {"dataset": "digits", "batch_size": batch},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 3, "log_every_steps": 5}, "resources": {"processes": processes}}))
        out = cli_subprocess("submit", spec, "--runs-dir", root / "runs")
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1], out.stdout

    one, one_out = run("one", 1, 64)
    two, _ = run("two", 2, 64)
    other, _ = run("other", 1, 32)
    return {"root": root, "runs": root / "runs", "one": one, "two": two, "other": other, "one_out": one_out}


def test_a_run_counts_its_flops_memory_and_start_up(cpu_runs):
    from pathlib import Path

    run = Path(cpu_runs["one"])
    summary = json.loads((run / "summary.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    assert summary["flops_per_sample"] > 0
    assert summary["achieved_tflops"] == pytest.approx(summary["flops_per_sample"] * summary["samples_per_s"] / 1e12)
    assert summary["peak_tflops_per_device"] is None and summary["mfu"] is None  # a CPU has no catalog peak
    assert summary["peak_memory_bytes"] > 50 * 2**20  # torch alone holds more than this in RSS
    phases = timing["phases"]
    marks = [phases[k] for k in ("loop_entered_s", "data_loaded_s", "model_built_s", "first_step_s")]
    assert marks == sorted(marks) and marks[-1] == pytest.approx(timing["time_to_first_step_s"])
    shares = timing["shares"]
    assert shares["data"] + shares["compute"] + shares["eval"] == pytest.approx(1.0)
    assert isinstance(summary["diagnosis"], list)


def test_compare_one_and_two_workers_side_by_side(cpu_runs, tmp_path):
    out = cli("compare", cpu_runs["one"], cpu_runs["two"], "--out", tmp_path / "cmp")
    assert out.exit_code == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    for column in ("gpu", "s/epoch", "samples/s", "speedup", "scaling", "1st", "data/compute/allreduce/eval",
                   "test_loss", "test_acc", "$/epoch", "$"):
        assert column in header
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    base, two = result["runs"]
    assert result["like_for_like"] and result["differing_fields"] == []
    assert base["speedup"] == 1.0 and two["speedup"] == pytest.approx(base["epoch_s"] / two["epoch_s"])
    assert two["scaling_efficiency"] == pytest.approx(two["samples_per_s"] / base["samples_per_s"] / 2)
    assert base["scaling_efficiency"] is None  # nothing has fewer workers than the baseline
    assert (base["gpu"], two["gpu"]) == ("cpu x1", "cpu x2")
    assert two["shares"]["allreduce"] > 0 and base["shares"]["allreduce"] == 0
    assert base["test_loss"] == pytest.approx(two["test_loss"], rel=1e-4)  # the same maths at both sizes
    assert base["usd_per_epoch"] is None  # this machine's CPU costs nothing gpujob knows of
    _assert_is_the_comparison_png(tmp_path / "cmp" / "compare.png")
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "cmp")


def _assert_is_the_comparison_png(path):
    """A real image of the four panels, not just a file: it decodes, has the size the figure is
    drawn at, and has the plots' colours on it."""
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (800, 1200)
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = {tuple(c) for c in rgb[:: 7]}
    assert len(colours) > 50
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # the two runs' lines (tab:blue, tab:orange)


def test_compare_says_when_the_runs_are_not_like_for_like(cpu_runs, tmp_path):
    out = cli("compare", cpu_runs["one"], cpu_runs["other"], "--out", tmp_path / "cmp")
    assert out.exit_code == 0, out.stderr
    assert "note: the runs differ in data.batch_size: speed is not like for like" in out.stdout
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["differing_fields"] == ["data.batch_size"] and not result["like_for_like"]
    assert all(r["scaling_efficiency"] is None for r in result["runs"])


def test_compare_refuses_what_it_cannot_compare_and_overwrites_nothing(cpu_runs, tmp_path):
    alone = cli("compare", cpu_runs["one"])
    assert alone.exit_code == 2 and "two or more runs" in alone.stderr
    missing = cli("compare", cpu_runs["one"], tmp_path / "nope")
    assert missing.exit_code == 2 and "no such run folder" in missing.stderr
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "compare.png").write_text("mine")
    taken = cli("compare", cpu_runs["one"], cpu_runs["two"], "--out", tmp_path / "kept")
    assert taken.exit_code == 2 and "--out" in taken.stderr
    assert (tmp_path / "kept" / "compare.png").read_text() == "mine"
    by_name = [p.name for p in cpu_runs["runs"].iterdir()]
    named = cli("compare", *sorted(n for n in by_name if n.startswith(("one", "two"))), "--runs-dir", cpu_runs["runs"])
    assert named.exit_code == 0, named.stderr
    assert named.run_dir.parent == cpu_runs["runs"] and named.run_dir.name.startswith("compare-")
    shutil.rmtree(named.run_dir)


def test_show_puts_result_speed_breakdown_and_diagnosis_on_one_screen(cpu_runs):
    out = cli("show", cpu_runs["two"])
    assert out.exit_code == 0, out.stderr
    keys = [line.split("  ")[0] for line in out.stdout.splitlines() if line and not line.startswith(" ")]
    for key in ("run", "model", "device", "result", "speed", "peak memory", "start-up", "epoch time", "diagnosis",
                "folder"):
        assert key in keys, out.stdout
    assert re.search(r"start-up +[\d.]+ s to the first step: submitted to the job's start [\d.]+ s, imports", out.stdout)
    assert "all-reduce in flight" in out.stdout


def test_show_of_an_unfinished_run_says_so(tmp_path):
    (tmp_path / "half").mkdir()
    out = cli("show", tmp_path / "half")
    assert out.exit_code == 2 and "has not finished" in out.stderr and "Traceback" not in out.stderr


def test_the_per_sample_dataloader_pattern_is_diagnosed_data_bound(write_spec, tmp_path):
    """The notebook that timed its DataLoader and called it training: per-sample work in the
    training process, a model with little to do. gpujob says so, and what to change."""
    spec = write_spec(model={"name": "tests.plugins:tiny_mlp"},
                      data={"dataset": "tests.plugins:slow_blobs", "batch_size": 32, "num_workers": 0,
                            "args": {"samples": 256, "delay_s": 0.002}},
                      train={"epochs": 2, "log_every_steps": 4})
    out = cli_subprocess("submit", spec, "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr
    run = out.stdout.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "runs" / run.split("/")[-1] / "summary.json").read_text())
    kinds = [d["kind"] for d in summary["diagnosis"]]
    assert "data-bound" in kinds
    assert re.search(r"^diagnosis: data-bound: the training step waited for its next batch \d+% of the time; "
                     r"raise data.num_workers \(now 0\)", out.stdout, re.M)
    shown = cli("show", run)
    assert "data-bound" in shown.stdout and "data.num_workers (now 0)" in shown.stdout


# ---- GPU figures, from run folders as a GPU run writes them ------------------------------------


def _gpu_run(cpu_runs, tmp_path, name: str, world: int, samples_per_s: float, mfu: float, epoch_s: float,
             allreduce_s: float = 0.0, cost: dict | None = None):
    """A copy of a real run, its figures set to what an A10G run writes (device, peak, MFU, epochs)."""
    run = tmp_path / "runs" / name
    shutil.copytree(cpu_runs["one"], run)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(device="cuda:0", device_name="NVIDIA A10G", world_size=world, precision="bf16",
                   samples_per_s=samples_per_s, achieved_tflops=mfu * 70 * world, peak_tflops_per_device=70.0,
                   mfu=mfu, diagnosis=[])
    (run / "summary.json").write_text(json.dumps(summary))
    timing = json.loads((run / "timing.json").read_text())
    timing["epochs"] = [{"epoch": e, "wall_s": epoch_s - 0.1, "data_s": 0.01, "compute_s": epoch_s - 0.11,
                         "eval_s": 0.1, "allreduce_s": allreduce_s, "barrier_wait_s": 0.0} for e in (1, 2, 3)]
    (run / "timing.json").write_text(json.dumps(timing))
    env = json.loads((run / "env.json").read_text())
    env.update(devices=["NVIDIA A10G"] * world, device_memory_gb=[23.7] * world)
    (run / "env.json").write_text(json.dumps(env))
    spec = (run / "spec.yaml").read_text().replace("precision: fp32", "precision: bf16")
    (run / "spec.yaml").write_text(spec.replace("gpu: null", f"gpu: A10G:{world}"))
    if cost:
        (run / "cost.json").write_text(json.dumps(cost))
    return run


def test_a_gpu_run_that_leaves_the_card_idle_is_told_so(cpu_runs, tmp_path):
    run = _gpu_run(cpu_runs, tmp_path, "idle", 1, 9000.0, 0.02, 1.0)
    out = cli("show", run)
    assert out.exit_code == 0, out.stderr
    assert "MFU 2.0% of 70 TFLOP/s per device" in out.stdout
    assert re.search(r"device-underused: 1.40 TFLOP/s is 2.0% of the device's 70 TFLOP/s peak; give it more work "
                     r"per step: a larger data.batch_size", out.stdout)
    assert "NVIDIA A10G x1" in out.stdout


def test_compare_gpu_runs_in_dollars_and_scaling(cpu_runs, tmp_path):
    cost = {"backend": "modal", "rented": "1x A10G", "price_per_hour_usd": 1.10, "billed_s": 10.0,
            "estimated_usd": 0.0031, "basis": "test"}
    one = _gpu_run(cpu_runs, tmp_path, "a10g-1", 1, 9000.0, 0.3, 1.0, cost=cost)
    two = _gpu_run(cpu_runs, tmp_path, "a10g-2", 2, 15000.0, 0.25, 0.6, allreduce_s=0.3,
                   cost={**cost, "rented": "2x A10G", "price_per_hour_usd": 2.20, "estimated_usd": 0.004})
    out = cli("compare", one, two, "--out", tmp_path / "cmp")
    assert out.exit_code == 0, out.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a, b = result["runs"]
    assert (a["gpu"], b["gpu"]) == ("A10G x1", "A10G x2")
    assert a["usd_per_epoch"] == pytest.approx(1.10 * 1.0 / 3600) and b["usd_per_epoch"] == pytest.approx(2.2 * 0.6 / 3600)
    assert b["speedup"] == pytest.approx(1.0 / 0.6) and b["scaling_efficiency"] == pytest.approx(15000 / 9000 / 2)
    assert "$0.0003" in out.stdout and "83%" in out.stdout
    assert result["like_for_like"]


def test_plan_uses_a_measured_run_where_there_is_one(cpu_runs, tmp_path, write_spec):
    _gpu_run(cpu_runs, tmp_path, "a10g-1", 1, 9000.0, 0.3, 1.25)
    spec = write_spec(name="one", model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                      train={"epochs": 4, "precision": "bf16"}, resources={"gpu": "A10G"})
    out = cli("plan", spec, "--runs-dir", tmp_path / "runs", "--gpus", "L4,A10G,H100:2")
    assert out.exit_code == 0, out.stderr
    table = {line.split()[0] + " " + line.split()[1]: line for line in out.stdout.splitlines()
             if re.match(r"^(L4|A10G|H100) x", line)}
    assert set(table) == {"L4 x1", "A10G x1", "H100 x2"}
    assert "measured (a10g-1)" in table["A10G x1"] and re.search(r"\b1\.25\b", table["A10G x1"])
    assert "5 s" in table["A10G x1"]  # 4 epochs of 1.25 s
    assert "estimate," in table["L4 x1"] and "estimate," in table["H100 x2"]
    assert re.search(r"^cheapest: \S+ x\d, about \$[\d.]+ \(modal\)$", out.stdout, re.M)
    assert re.search(r"^fastest: \S+ x\d, (~\d+ s|under 1 s)$", out.stdout, re.M)


def test_plan_and_the_dry_run_price_the_start_up_modal_bills(cpu_runs, tmp_path, write_spec):
    """Issue 29: Modal bills a container from its start (~1 s, then the job's imports, data, model
    and final save) to its end (the 2 s scale-down window), not only the training. The dollars of
    `plan` and of the dry run include it: the job's own start-up as a finished run of it measured
    it (timing.json: everything but the training loop), or a stated assumption."""
    from runner.reports.estimate import ASSUMED_JOB_STARTUP_S, CONTAINER_START_S

    spec = write_spec(name="one", model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                      optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, resources={"gpu": "A10G"})
    empty = tmp_path / "none"
    out = cli("plan", spec, "--runs-dir", empty, "--gpus", "A10G")
    assert out.exit_code == 0, out.stderr
    assumed = round(CONTAINER_START_S["modal"] + ASSUMED_JOB_STARTUP_S)
    assert f"'$ total' includes ~{assumed} s of billed start-up a run" in out.stdout and "assumed" in out.stdout
    dry = cli("submit", spec, "--backend", "modal", "--dry-run", "--runs-dir", empty)
    assert dry.exit_code == 0, dry.stderr
    assert re.search(rf"about \$[\d.]+ at \$1\.10/h \(modal\) with ~{assumed} s of billed start-up", dry.stdout)

    run = _gpu_run(cpu_runs, tmp_path, "a10g-1", 1, 9000.0, 0.3, 1.25)
    timing = json.loads((run / "timing.json").read_text())
    timing.update(total_s=50.0, train_loop_s=10.0)  # 40 s that were not training
    (run / "timing.json").write_text(json.dumps(timing))
    spec_text = (run / "spec.yaml").read_text()
    measured_spec = tmp_path / "measured.yaml"
    measured_spec.write_text(spec_text)
    out = cli("plan", measured_spec, "--runs-dir", tmp_path / "runs", "--gpus", "A10G")
    assert out.exit_code == 0, out.stderr
    seconds = round(CONTAINER_START_S["modal"] + 40.0)
    assert f"includes ~{seconds} s of billed start-up a run (the container's start, then the job's start-up and " \
           "save measured by a10g-1)" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("A10G x1"))
    # 3 epochs of 1.25 s measured, plus the start-up, at $1.10/h
    assert f" {1.10 * (3 * 1.25 + seconds) / 3600:.2f} " in row


def test_plan_refuses_what_a_card_cannot_run_and_bad_gpu_names(write_spec, tmp_path):
    spec = write_spec(model={"name": "cnn"}, data={"dataset": "digits"}, train={"precision": "bf16"})
    out = cli("plan", spec, "--gpus", "T4,A10G", "--runs-dir", tmp_path)
    assert out.exit_code == 0, out.stderr
    t4 = next(line for line in out.stdout.splitlines() if line.startswith("T4 x1"))
    assert "no (T4 (compute capability 7.5) has no bf16, which needs 8.0 (Ampere) or newer)" in t4
    assert "cheapest: A10G x1" in out.stdout  # the T4 that cannot run it is not offered
    bad = cli("plan", spec, "--gpus", "T4,Z80")
    assert bad.exit_code == 2 and "--gpus: unknown GPU type 'Z80'" in bad.stderr
    cpu = cli("plan", spec, "--gpus", "cpu")
    assert cpu.exit_code == 2 and "--gpus" in cpu.stderr
    factory = write_spec("f.yaml", data={"dataset": "tests.plugins:blobs"})
    out = cli("plan", factory)  # issue 29: the user's own dataset is loaded and estimated, not refused
    assert out.exit_code == 0 and "estimate for test-job" in out.stdout, out.stderr


def test_plan_estimates_grow_with_the_work_and_shrink_with_the_card(write_spec, tmp_path):
    from runner.reports.estimate import job_shape, on_gpu
    from runner.gpus import parse_gpu
    from runner.spec.load import load_spec

    def spec(epochs, batch=256):
        return write_spec(f"r{epochs}-{batch}.yaml", model={"name": "resnet18"},
                          data={"dataset": "cifar10", "batch_size": batch}, train={"epochs": epochs, "precision": "bf16"})

    out = cli("plan", spec(2), "--runs-dir", tmp_path)
    assert out.exit_code == 0, out.stderr
    assert "GFLOP per sample" in out.stdout and "kernels per step" in out.stdout
    seconds = {line.split()[0]: float(line.split()[3].replace(",", "")) for line in out.stdout.splitlines()
               if re.match(r"^(L4|A10G|A100-80GB|H100) x1", line)}
    assert seconds["H100"] < seconds["A100-80GB"] < seconds["A10G"]
    h100 = parse_gpu("H100").type
    two, four = (on_gpu(job_shape(load_spec(spec(n))), h100, 1) for n in (2, 4))
    assert four.total_s == pytest.approx(2 * two.total_s) and four.epoch_s == pytest.approx(two.epoch_s)
    assert four.training_usd == pytest.approx(2 * two.training_usd)
    # issue 29: the dollars add what the card is billed besides training, the same for any length
    assert four.startup_s == two.startup_s > 0 and "assumed" in two.startup_how
    assert two.total_usd == pytest.approx(two.usd_per_hour * (two.total_s + two.startup_s) / 3600)
    split = on_gpu(job_shape(load_spec(spec(2))), h100, 2)
    assert split.epoch_s < two.epoch_s and split.usd_per_hour == 2 * two.usd_per_hour
    huge = on_gpu(job_shape(load_spec(spec(1, batch=50_000))), parse_gpu("T4").type, 1)
    assert not huge.fits


def test_gpus_lists_the_catalog_with_prices_and_their_source():
    from runner.gpus import CATALOG, PRICES_READ_ON

    out = cli("gpus")
    assert out.exit_code == 0
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["type", "memory", "bandwidth", "bf16"]
    names = [line.split()[0] for line in lines[1:len(CATALOG) + 1]]
    assert names == [g.name for g in CATALOG]
    a10g = next(line for line in lines if line.startswith("A10G "))
    assert "24 GB" in a10g and "600 GB/s" in a10g and " 70 " in a10g and "$1.10 modal" in a10g and "vast: market" in a10g
    assert "free on kaggle" in next(line for line in lines if line.startswith("T4 "))
    assert any(PRICES_READ_ON in line for line in lines)


def test_the_dry_run_estimates_the_whole_job(write_spec, tmp_path):
    from tests.test_dryrun import dry, rows

    here = rows(dry(write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 64},
                               train={"epochs": 5}), "--runs-dir", tmp_path).stdout)
    assert re.match(r"~[\d.]+ s per epoch, (~[\d.]+ (s|min)|under 1 s) for 5 epoch\(s\) on this CPU \(22 steps; timed at 8 and "
                    r"32 samples", here["estimate"]), here
    modal = dry(write_spec("m.yaml", model={"name": "cnn"}, data={"dataset": "digits"},
                           train={"epochs": 5, "precision": "bf16"}, resources={"gpu": "A10G:2"}, backend="modal"),
                "--runs-dir", tmp_path)
    got = rows(modal.stdout)
    assert re.match(r"~[\d.]+ s per epoch, (~\d+ s|under 1 s) for 5 epoch\(s\) on A10G x2, about \$[\d.]+ at \$2\.20/h \(modal\)",
                    got["estimate"]), got
