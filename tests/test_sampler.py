"""How busy the device was (issue 26): the sampler thread writes RUN/utilisation.jsonl from an
injected reader (no GPU here), never holds the job up, the summary gets mean utilisation, peak
memory and energy, and the diagnosis says when a GPU sat idle half the time."""

from __future__ import annotations

import json
import sys
import threading
import time
import types

import pytest

from runner.reports.diagnosis import diagnose
from runner.training.sampler import (EVERY_ENV, UTILISATION, Sampler, node_samples_file, nvml_reader,
                                     throttle_names, utilisation_summary)
from tests.conftest import cli, read_jsonl, wait_for


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_sampler_writes_each_devices_sample_until_closed(tmp_path):
    path = tmp_path / UTILISATION
    calls = []

    def read():
        calls.append(1)
        return [{"device": "cuda:0", "util_percent": 90, "power_w": 200.0},
                {"device": "cuda:1", "util_percent": 70, "power_w": 100.0}]

    sampler = Sampler(path, read=read, every_s=0.05)
    sampler.on_start({"device": "cuda"})
    wait_for(lambda: len(_lines(path)) >= 6, "three samples of two devices", timeout=30)
    began = time.monotonic()
    sampler.close()
    assert time.monotonic() - began < 2  # close wakes the thread at once
    count = len(calls)
    time.sleep(0.2)
    assert len(calls) == count  # no sample after close
    samples = _lines(path)
    assert [s["device"] for s in samples[:2]] == ["cuda:0", "cuda:1"] and samples[0]["t"] == samples[1]["t"]
    assert all(a["t"] <= b["t"] for a, b in zip(samples, samples[1:]))


def test_a_slow_or_failing_reader_never_holds_or_fails_the_job(tmp_path, capsys):
    release = threading.Event()

    def slow():
        release.wait(10)
        return [{"device": "cpu", "util_percent": 10}]

    sampler = Sampler(tmp_path / UTILISATION, read=slow, every_s=0.01)
    began = time.monotonic()
    sampler.on_start({"device": "cpu"})
    sampler.on_step({"step": 1})
    assert time.monotonic() - began < 0.5  # training goes on while the reader takes its time
    release.set()
    sampler.close()

    def broken():
        raise RuntimeError("NVML lost the device")

    failing = Sampler(tmp_path / "other.jsonl", read=broken, every_s=0.01)
    failing.on_start({"device": "cuda"})
    failing.thread.join(5)
    failing.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "device sampling stopped" in line]
    assert warnings == ["gpujob: warning: device sampling stopped (RuntimeError: NVML lost the device); "
                        "the job is not affected"]


def test_the_summary_has_mean_utilisation_peak_memory_and_energy(tmp_path):
    samples = [{"t": t, "device": f"cuda:{d}", "util_percent": util, "memory_used_bytes": mem, "power_w": power,
                "throttle": ["SwPowerCap"] if t == 10 and d == 0 else []}
               for t, d, util, mem, power in [(5, 0, 80, 1_000, 100.0), (5, 1, 60, 3_000, 50.0),
                                             (10, 0, 100, 2_000, 300.0), (10, 1, 40, 2_500, 50.0)]]
    (tmp_path / UTILISATION).write_text("".join(json.dumps(s) + "\n" for s in samples) + '{"t": 15, "dev')
    summary = utilisation_summary(tmp_path)  # a line cut short by a write in progress is left out
    one_node = {"device": "cuda", "devices": 2, "samples": 2, "mean_util_percent": 70.0,
                "peak_memory_used_bytes": 3_000, "energy_j": 5 * (100 + 300) / 2 + 5 * 50.0, "throttled_samples": 1}
    assert summary == {**one_node, "nodes": {"": one_node}}  # lines of before the node field: one unnamed node
    assert utilisation_summary(tmp_path / "none") is None


def test_each_node_samples_into_its_own_file_and_the_summary_covers_every_node(tmp_path):
    """A two-node job: rank 0's sampler and another node's first worker's, each with an injected
    reader (two GPUs busy 90% on node A, one 30% on node B), as worker.py starts them."""
    readers = {"node-a": lambda: [{"device": "cuda:0", "util_percent": 90, "power_w": 300.0, "memory_used_bytes": 5},
                                  {"device": "cuda:1", "util_percent": 90, "power_w": 300.0, "memory_used_bytes": 6}],
               "node-b": lambda: [{"device": "cuda:0", "util_percent": 30, "power_w": 100.0, "memory_used_bytes": 9}]}
    samplers = [Sampler(tmp_path / UTILISATION, read=readers["node-a"], every_s=0.02, node="node-a"),
                Sampler(tmp_path / node_samples_file("node-b"), read=readers["node-b"], every_s=0.02, node="node-b")]
    for sampler in samplers:
        sampler.on_start({"device": "cuda"})
    wait_for(lambda: len(_lines(tmp_path / UTILISATION)) >= 6 and len(_lines(tmp_path / "utilisation-node-b.jsonl")) >= 3,
             "three samples on each node", timeout=30)
    for sampler in samplers:
        sampler.close()
    assert {s["node"] for s in _lines(tmp_path / UTILISATION)} == {"node-a"}
    assert {s["node"] for s in _lines(tmp_path / "utilisation-node-b.jsonl")} == {"node-b"}
    summary = utilisation_summary(tmp_path)
    a, b = summary["nodes"]["node-a"], summary["nodes"]["node-b"]
    assert set(summary["nodes"]) == {"node-a", "node-b"}
    assert (a["devices"], a["mean_util_percent"], a["peak_memory_used_bytes"]) == (2, 90.0, 6)
    assert (b["devices"], b["mean_util_percent"], b["peak_memory_used_bytes"]) == (1, 30.0, 9)
    # over all nodes: cuda:0 of node A and cuda:0 of node B are two devices, each integrated on its own
    assert summary["devices"] == 3 and summary["samples"] == a["samples"] + b["samples"]
    assert summary["peak_memory_used_bytes"] == 9 and summary["energy_j"] == pytest.approx(a["energy_j"] + b["energy_j"])
    weights = (2 * a["samples"], b["samples"])  # lines of each node
    assert summary["mean_util_percent"] == pytest.approx((90 * weights[0] + 30 * weights[1]) / sum(weights), abs=0.1)


def test_a_node_without_the_run_folder_says_so_and_samples_nothing(tmp_path, capsys):
    sampler = Sampler(tmp_path / "not-shared" / node_samples_file("node-b"), read=lambda: [], every_s=0.01,
                      node="node-b")
    sampler.on_start({"device": "cpu"})
    sampler.close()
    assert sampler.thread is None and not (tmp_path / "not-shared").exists()
    assert capsys.readouterr().err.splitlines() == [
        f"gpujob: warning: this node (node-b) has no run folder {tmp_path / 'not-shared'} (no shared file system): "
        "its devices are not sampled; the job is not affected"]


def _fake_pynvml(util_by_index, mask=0):
    """pynvml as NVML answers for GPUs of the given utilisation: the real module's constants and
    error type, its functions answering from the table (NVMLError where a card gives no figure)."""
    import pynvml

    fake = types.ModuleType("pynvml")
    fake.__dict__.update({k: v for k, v in vars(pynvml).items() if k.startswith(("NVML", "nvmlClocksEventReason"))})
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: len(util_by_index)
    fake.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util_by_index[h[1]], memory=0)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h[1] + 1) * 2**30, total=80 * 2**30)
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 60 + h[1]

    def no_power(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    fake.nvmlDeviceGetPowerUsage = no_power
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda h: mask
    return fake


def test_nvml_samples_the_visible_gpus_and_names_throttling(monkeypatch):
    import pynvml

    mask = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown \
        | pynvml.nvmlClocksEventReasonGpuIdle
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([35, 55, 75], mask))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    samples = nvml_reader()()
    assert [(s["device"], s["util_percent"], s["memory_used_bytes"], s["temperature_c"]) for s in samples] == \
        [("cuda:0", 75, 3 * 2**30, 62), ("cuda:1", 35, 2**30, 60)]
    assert samples[0]["power_w"] is None  # a figure the card does not give
    assert samples[0]["throttle"] == ["HwThermalSlowdown", "SwPowerCap"]  # idle is no throttling
    assert throttle_names(pynvml, 0) == []


def _summary(**utilisation):
    return {"world_size": 1, "device": "cuda", "utilisation": {"device": "cuda", "samples": 12, **utilisation}}


def test_a_gpu_busy_under_half_the_time_is_diagnosed_device_underused():
    (finding,) = diagnose(_summary(mean_util_percent=31.5), {})
    assert finding.kind == "device-underused" and "busy 32% of the time" in finding.evidence
    assert "data.batch_size" in finding.change
    assert diagnose(_summary(mean_util_percent=85.0), {}) == []
    assert diagnose(_summary(mean_util_percent=20.0, samples=2), {}) == []  # too few samples to say
    cpu = {"world_size": 1, "utilisation": {"device": "cpu", "samples": 12, "mean_util_percent": 10.0}}
    assert diagnose(cpu, {}) == []  # a CPU shared with others says little of the job
    low_mfu = {**_summary(mean_util_percent=30.0), "mfu": 0.02, "achieved_tflops": 1.0, "peak_tflops_per_device": 50}
    assert [f.kind for f in diagnose(low_mfu, {})] == ["device-underused"]  # said once


def test_a_local_run_samples_its_cpu_into_the_folder_and_the_summary(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "0.2")
    spec = write_spec(model={"name": "cnn"}, data={"dataset": "digits", "batch_size": 32},
                      train={"epochs": 4, "log_every_steps": 20})
    result = cli("submit", spec, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    samples = read_jsonl(result.run_dir / UTILISATION)
    assert samples and all(s["device"] == "cpu" and s["threads"] >= 1 for s in samples)
    summary = json.loads((result.run_dir / "summary.json").read_text())["utilisation"]
    assert summary["device"] == "cpu" and summary["samples"] >= 1 and summary["mean_util_percent"] > 0
    assert summary["peak_memory_used_bytes"] > 10 * 2**20 and summary["energy_j"] is None
    assert "rank 0's CPU threads busy" in cli("show", result.run_dir).stdout


@pytest.mark.parametrize("value", ["0"])
def test_sampling_can_be_turned_off(write_spec, tmp_path, monkeypatch, value):
    monkeypatch.setenv(EVERY_ENV, value)
    result = cli("submit", write_spec(train={"epochs": 1}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0 and not (result.run_dir / UTILISATION).exists()
    assert json.loads((result.run_dir / "summary.json").read_text())["utilisation"] is None


def test_show_says_how_busy_the_device_was():
    from runner.reports.show import utilisation_line

    line = utilisation_line({"device": "cuda", "devices": 2, "samples": 40, "mean_util_percent": 71.6,
                             "peak_memory_used_bytes": 3 * 2**30, "energy_j": 720_000.0, "throttled_samples": 2})
    assert line == ("the GPU(s) busy 72% on average (40 samples, utilisation.jsonl), peak 3.0 GiB used, "
                    "0.200 kWh (720,000 J), clocks held back in 2 sample(s)")


def test_without_nvml_bindings_a_cuda_job_goes_on_unsampled_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    sampler = Sampler(tmp_path / UTILISATION, every_s=0.01)
    sampler.on_start({"device": "cuda"})
    sampler.on_step({"step": 1})
    sampler.close()
    assert sampler.thread is None and not (tmp_path / UTILISATION).exists()
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "device sampling" in line]
    assert warning.startswith("gpujob: warning: device sampling is off (ModuleNotFoundError") and "not affected" in warning
