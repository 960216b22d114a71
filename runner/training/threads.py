"""How many intra-op threads each worker runs on a CPU, chosen once by the launcher and recorded
in env.json, so a run whose threads fought over cores can be told apart afterwards (issue 29:
a one-worker text job ran 30x faster with OMP_NUM_THREADS=1 than with torch's default).

torch's default is one thread per core of the whole machine, in every process: two workers on
two cores then run four threads that take turns, and a core another process holds (a busy
machine, a container's CPU set) is counted all the same. gpujob gives each worker an equal
share of the cores this process may run on (its CPU affinity, which containers and `taskset`
narrow), at least one; an OMP_NUM_THREADS the user set is kept as theirs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

THREADS_WHY = "GPUJOB_THREADS_WHY"  # the launcher's reason, read back by the worker for env.json


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str


def cores_available() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS has no affinity: the machine's count is all there is
        return os.cpu_count() or 1


def choose_threads(workers_on_node: int, environ: Mapping[str, str], cores: int | None = None,
                   load: float = 0.0) -> ThreadChoice:
    """Each worker's share of the cores that other processes leave free. `load` is the machine's
    1-minute load average as the job starts (before its workers run): cores it says are busy are
    not counted, as OpenMP's OMP_DYNAMIC would (a thread waiting for a busy core slows every step
    it takes part in: the 30x of issue 29 was one worker's two threads at load 1.5 on 2 cores)."""
    cores = cores_available() if cores is None else cores
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given:
        return ThreadChoice(_as_count(given, cores, workers_on_node), f"OMP_NUM_THREADS={given} was set before "
                                                                       "gpujob started; kept")
    busy = min(cores - 1, round(load)) if load > 0 else 0
    threads = max(1, (cores - busy) // max(1, workers_on_node))
    why = f"{cores} core(s) available / {workers_on_node} worker(s) on this node"
    if busy:
        why = f"{cores} core(s) available, {busy} busy with other processes (load {load:.1f}) / " \
              f"{workers_on_node} worker(s) on this node"
    return ThreadChoice(threads, why)


def threads_as_before(run_dir, workers_on_node: int) -> ThreadChoice | None:
    """The intra-op threads the run's last attempt ran (its env.json), for a resume with as many
    workers per node: choose_threads follows the machine's load, and another count sums a
    step's reductions in another order, so a resume under another load would not train on
    bit for bit as the run it continues (seen: a loss apart in its 8th decimal)."""
    import json
    from pathlib import Path

    try:
        record = json.loads((Path(run_dir) / "env.json").read_text()).get("threads")
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if not isinstance(record, dict) or _count(record, "workers_on_node") != workers_on_node:
        return None
    threads = _count(record, "intra_op")
    return ThreadChoice(threads, f"{threads} as the run's earlier attempt ran (env.json), so that the resumed "
                                 "run computes as it did") if threads else None


def machine_load() -> float:
    """The 1-minute load average, 0 where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _as_count(given: str, cores: int, workers: int) -> int:
    """What OpenMP makes of a value like "4" or "4,2" (nested levels: the first counts)."""
    try:
        return max(1, int(given.split(",")[0]))
    except ValueError:
        return max(1, cores // max(1, workers))


def thread_record() -> dict:
    """For env.json: the threads this worker runs, the cores and workers they share, and why."""
    import torch

    workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    given = os.environ.get("OMP_NUM_THREADS")
    why = os.environ.get(THREADS_WHY) or (f"OMP_NUM_THREADS={given} was set before gpujob started; kept"
                                          if given else "torch's default: one thread per core of the machine")
    return {"intra_op": torch.get_num_threads(), "cores_available": cores_available(),
            "workers_on_node": workers, "why": why}


def oversubscribed(record: dict | None) -> bool:
    """Whether the node's workers ran more threads than it had cores for them."""
    if not isinstance(record, dict):  # an older run's env.json, or one edited by hand
        return False
    threads, workers, cores = (_count(record, key) for key in ("intra_op", "workers_on_node", "cores_available"))
    if not (threads and workers and cores):
        return False
    return threads * workers > cores


def _count(record: dict, key: str) -> int:
    """A positive count the record holds, or 0 for one it lacks or holds as something else."""
    value = record.get(key)
    return value if isinstance(value, int) and value > 0 else 0
