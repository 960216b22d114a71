"""How busy the devices are while the job trains: a background thread on each node's first worker
(local rank 0) samples that node's devices every few seconds, one line per device per sample with
the node's host name: rank 0 into RUN/utilisation.jsonl, the other nodes each into their own
RUN/utilisation-HOST.jsonl. The summary gets the mean utilisation, the peak memory and the energy,
over all nodes and per node (`utilisation` in summary.json).

A file per node, not one shared file: the nodes of a multi-node job share the run folder over a
network file system (NFS and the like), where appends from two machines are not atomic and lines
could interleave or be lost; each node writing only its own file needs no locking.

On CUDA the samples are NVML's (the nvidia-ml-py bindings), for each GPU this process sees: SM
utilisation, memory used, power, temperature and the reasons its clocks were held back. On a CPU
they are this process's own: CPU time over wall time, against the intra-op threads it was given.
The sampler never stops or slows the job: a reader that fails ends the sampling with one
warning, and the thread is a daemon that only wakes every few seconds.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

UTILISATION = "utilisation.jsonl"
SAMPLE_EVERY_S = 5.0
EVERY_ENV = "GPUJOB_SAMPLE_EVERY_S"  # another interval, in seconds (0: no sampling)
SAMPLES_TO_ENV = "GPUJOB_SAMPLES_TO"  # the run folder, for a node's first worker the launcher gives no --run-dir
Reader = Callable[[], list[dict]]  # one dict per device: util_percent, memory_used_bytes, power_w, ...


def node_samples_file(host: str) -> str:
    """The file of a node other than rank 0's: its host name, made safe for a file name."""
    return f"utilisation-{re.sub(r'[^A-Za-z0-9._-]', '_', host)}.jsonl"


def sampler_listeners(run_dir: Path, first_node: bool = True) -> list:
    """[the sampler of this node], every SAMPLE_EVERY_S or what EVERY_ENV says; [] where that is
    0. `first_node`: rank 0's, into UTILISATION; another node's goes into its own file."""
    try:
        every_s = float(os.environ.get(EVERY_ENV) or SAMPLE_EVERY_S)
    except ValueError:
        print(f"gpujob: warning: {EVERY_ENV}={os.environ[EVERY_ENV]!r} is not a number of seconds; sampling every "
              f"{SAMPLE_EVERY_S:g} s", file=sys.stderr)
        every_s = SAMPLE_EVERY_S
    if every_s <= 0:
        return []
    host = socket.gethostname()
    path = Path(run_dir) / (UTILISATION if first_node else node_samples_file(host))
    return [Sampler(path, every_s=every_s, node=host)]


class Sampler:
    """A listener of the training loop: starts sampling when training starts, stops on close."""

    def __init__(self, path: Path, read: Reader | None = None, every_s: float = SAMPLE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, node: str | None = None):
        self.path, self.read, self.every_s, self.clock = path, read, every_s, clock
        self.node = node  # the host name each line carries
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.began = 0.0

    def on_start(self, start: dict) -> None:
        if not self.path.parent.is_dir():  # a node that does not share the run folder's file system
            _warn(f"this node ({self.node}) has no run folder {self.path.parent} (no shared file system): its "
                  "devices are not sampled")
            return
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
                    node = {"node": self.node} if self.node is not None else {}
                    for sample in self.read():
                        out.write(json.dumps({"t": t, **node, **sample}) + "\n")
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
    """summary.json's `utilisation`, from the samples so far of every node: over all of them, and
    per node under `nodes` (by host name); None where there are none."""
    samples = []
    for path in sorted(Path(run_dir).glob("utilisation*.jsonl")):
        samples += _read_samples(path)
    if not samples:
        return None
    by_node: dict[str, list[dict]] = {}
    for sample in samples:
        by_node.setdefault(str(sample.get("node", "")), []).append(sample)
    nodes = {node: _summarise(node_samples) for node, node_samples in sorted(by_node.items())}
    return {**_summarise(samples), "samples": sum(n["samples"] for n in nodes.values()), "nodes": nodes}


def _read_samples(path: Path) -> list[dict]:
    samples = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            samples.append(json.loads(line))
        except ValueError:
            continue  # a line being written as this reads
    return samples


def _summarise(samples: list[dict]) -> dict:
    """One node's figures, or all nodes' (a device is a node's: cuda:0 on two nodes is two)."""
    utils = [s["util_percent"] for s in samples if s.get("util_percent") is not None]
    memory = [s["memory_used_bytes"] for s in samples if s.get("memory_used_bytes") is not None]
    devices = sorted({_device(s) for s in samples}, key=lambda d: d[1])
    return {"device": "cuda" if devices[0][1].startswith("cuda") else "cpu", "devices": len(devices),
            "samples": len({s["t"] for s in samples}),
            "mean_util_percent": round(sum(utils) / len(utils), 1) if utils else None,
            "peak_memory_used_bytes": max(memory) if memory else None,
            "energy_j": _energy_j(samples),
            "throttled_samples": sum(1 for s in samples if s.get("throttle"))}


def _energy_j(samples: list[dict]) -> float | None:
    """Each device's power, integrated over the sampled time (trapezoids), summed over devices."""
    total, any_power = 0.0, False
    for device in {_device(s) for s in samples}:
        points = [(s["t"], s["power_w"]) for s in samples if _device(s) == device and s.get("power_w") is not None]
        for (t0, p0), (t1, p1) in zip(points, points[1:]):
            total += (t1 - t0) * (p0 + p1) / 2
            any_power = True
    return round(total, 1) if any_power else None


def _device(sample: dict) -> tuple[str, str]:
    return str(sample.get("node", "")), str(sample.get("device", "?"))
