"""How busy the device is while the job trains: a background thread on rank 0 samples it every
few seconds into RUN/utilisation.jsonl (one line per device per sample), and the summary gets the
mean utilisation, the peak memory and the energy (`utilisation` in summary.json).

On CUDA the samples are NVML's (the nvidia-ml-py bindings), for each GPU this process sees: SM
utilisation, memory used, power, temperature and the reasons its clocks were held back. On a CPU
they are this process's own: CPU time over wall time, against the intra-op threads it was given.
The sampler never stops or slows the job: a reader that fails ends the sampling with one
warning, and the thread is a daemon that only wakes every few seconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

UTILISATION = "utilisation.jsonl"
SAMPLE_EVERY_S = 5.0
EVERY_ENV = "GPUJOB_SAMPLE_EVERY_S"  # another interval, in seconds (0: no sampling)
Reader = Callable[[], list[dict]]  # one dict per device: util_percent, memory_used_bytes, power_w, ...


def sampler_listeners(run_dir: Path) -> list:
    """[the sampler], every SAMPLE_EVERY_S or what EVERY_ENV says; [] where that is 0."""
    try:
        every_s = float(os.environ.get(EVERY_ENV) or SAMPLE_EVERY_S)
    except ValueError:
        print(f"gpujob: warning: {EVERY_ENV}={os.environ[EVERY_ENV]!r} is not a number of seconds; sampling every "
              f"{SAMPLE_EVERY_S:g} s", file=sys.stderr)
        every_s = SAMPLE_EVERY_S
    return [Sampler(Path(run_dir) / UTILISATION, every_s=every_s)] if every_s > 0 else []


class Sampler:
    """A listener of the training loop: starts sampling when training starts, stops on close."""

    def __init__(self, path: Path, read: Reader | None = None, every_s: float = SAMPLE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.path, self.read, self.every_s, self.clock = path, read, every_s, clock
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.began = 0.0

    def on_start(self, start: dict) -> None:
        if self.read is None:
            try:
                self.read = nvml_reader() if str(start.get("device", "")).startswith("cuda") else cpu_reader()
            except Exception as err:  # no NVML bindings, no driver to ask: the job goes on unsampled
                _warn(f"device sampling is off ({type(err).__name__}: {err})")
                return
        self.began = self.clock()
        self.thread = threading.Thread(target=self._run, daemon=True, name="gpujob-sampler")
        self.thread.start()

    def on_step(self, record: dict) -> None:
        pass

    def on_epoch(self, record: dict) -> None:
        pass

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=self.every_s + 5)

    def _run(self) -> None:
        assert self.read is not None, "on_start chose the reader"
        try:
            with open(self.path, "a") as out:
                while not self.stop.wait(self.every_s):
                    t = round(self.clock() - self.began, 3)
                    for sample in self.read():
                        out.write(json.dumps({"t": t, **sample}) + "\n")
                    out.flush()
        except Exception as err:  # the job goes on without samples
            _warn(f"device sampling stopped ({type(err).__name__}: {err})")


def _warn(what: str) -> None:
    print(f"gpujob: warning: {what}; the job is not affected", file=sys.stderr, flush=True)


def cpu_reader() -> Reader:
    """This process's CPU use since the last sample: 100% is every intra-op thread busy."""
    import resource

    import torch

    last = [time.monotonic(), _cpu_seconds()]

    def read() -> list[dict]:
        now, cpu = time.monotonic(), _cpu_seconds()
        wall, used = now - last[0], cpu - last[1]
        last[:] = [now, cpu]
        threads = torch.get_num_threads()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return [{"device": "cpu", "util_percent": round(100 * used / wall / threads, 1) if wall > 0 else None,
                 "cpu_percent": round(100 * used / wall, 1) if wall > 0 else None, "threads": threads,
                 "memory_used_bytes": _rss_bytes(), "peak_memory_bytes": peak}]

    return read


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def nvml_reader() -> Reader:
    """NVML's figures for each CUDA device this process sees (CUDA_VISIBLE_DEVICES respected)."""
    import pynvml

    pynvml.nvmlInit()
    handles = _visible_handles(pynvml)

    def read() -> list[dict]:
        return [{"device": f"cuda:{index}", **_nvml_sample(pynvml, handle)} for index, handle in enumerate(handles)]

    return read


def _visible_handles(pynvml) -> list:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    handles = []
    for name in (part.strip() for part in visible.split(",")):
        if name.isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(name)))
        elif name.startswith(("GPU-", "MIG-")):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(name))
    return handles


def _nvml_sample(pynvml, handle) -> dict:
    def ask(call: Callable, *args):
        try:
            return call(handle, *args)
        except pynvml.NVMLError:  # a figure this card or driver does not give
            return None

    util = ask(pynvml.nvmlDeviceGetUtilizationRates)
    memory = ask(pynvml.nvmlDeviceGetMemoryInfo)
    power_mw = ask(pynvml.nvmlDeviceGetPowerUsage)
    reasons = ask(pynvml.nvmlDeviceGetCurrentClocksEventReasons)
    return {"util_percent": util.gpu if util is not None else None,
            "memory_used_bytes": memory.used if memory is not None else None,
            "power_w": power_mw / 1000 if power_mw is not None else None,
            "temperature_c": ask(pynvml.nvmlDeviceGetTemperature, pynvml.NVML_TEMPERATURE_GPU),
            "throttle": throttle_names(pynvml, reasons) if reasons is not None else None}


def throttle_names(pynvml, mask: int) -> list[str]:
    """The reasons NVML gives for clocks below their maximum, by name (idle is no throttling)."""
    prefix = "nvmlClocksEventReason"
    names = {name[len(prefix):]: getattr(pynvml, name) for name in dir(pynvml)
             if name.startswith(prefix) and name[len(prefix):] not in ("GpuIdle", "None", "All", "UserDefinedClocks")
             and isinstance(getattr(pynvml, name), int)}
    return sorted(name for name, bit in names.items() if bit and mask & bit)


def utilisation_summary(run_dir: Path) -> dict | None:
    """summary.json's `utilisation`, from the samples so far: None where there are none."""
    samples = []
    try:
        lines = (Path(run_dir) / UTILISATION).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            samples.append(json.loads(line))
        except ValueError:
            continue  # a line being written as this reads
    if not samples:
        return None
    return _summarise(samples)


def _summarise(samples: list[dict]) -> dict:
    utils = [s["util_percent"] for s in samples if s.get("util_percent") is not None]
    memory = [s["memory_used_bytes"] for s in samples if s.get("memory_used_bytes") is not None]
    devices = sorted({s.get("device", "?") for s in samples})
    return {"device": "cuda" if devices[0].startswith("cuda") else "cpu", "devices": len(devices),
            "samples": len({s["t"] for s in samples}),
            "mean_util_percent": round(sum(utils) / len(utils), 1) if utils else None,
            "peak_memory_used_bytes": max(memory) if memory else None,
            "energy_j": _energy_j(samples),
            "throttled_samples": sum(1 for s in samples if s.get("throttle"))}


def _energy_j(samples: list[dict]) -> float | None:
    """Each device's power, integrated over the sampled time (trapezoids), summed over devices."""
    total, any_power = 0.0, False
    for device in {s.get("device") for s in samples}:
        points = [(s["t"], s["power_w"]) for s in samples if s.get("device") == device and s.get("power_w") is not None]
        for (t0, p0), (t1, p1) in zip(points, points[1:]):
            total += (t1 - t0) * (p0 + p1) / 2
            any_power = True
    return round(total, 1) if any_power else None
