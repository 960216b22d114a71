"""Why a run was as fast as it was, and what to change: read from its summary.json and
timing.json, so a run from any backend, or one finished long ago, gets the same reading.

Each finding names the figure that shows it and one concrete change. The thresholds are where
the change starts to pay: a step that waits on data 30% of the time would be up to 1.4x faster
with the wait gone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from runner.training.threads import oversubscribed

DATA_SHARE = 0.30  # of training time spent waiting for the next batch
STARTUP_SHARE = 0.50  # of the job's wall time spent before the first step ended
COMM_SHARE = 0.25  # of training time in gradient all-reduces
LOW_MFU = 0.15  # achieved FLOP/s against the device's dense peak
LOW_BUSY_PERCENT = 50  # of the sampled time the GPU ran a kernel (NVML's utilisation, RUN/utilisation.jsonl)
MIN_SAMPLES = 3  # fewer say little about a whole run


@dataclass(frozen=True)
class Finding:
    kind: str  # data-bound | start-up-bound | communication-bound | device-underused | threads-oversubscribed
    evidence: str
    change: str

    def line(self) -> str:
        return f"{self.kind}: {self.evidence}; {self.change}"


def shares(timing: dict) -> dict:
    """Where the training time went, as shares of the epochs' wall time (data, compute,
    all-reduce, eval), over the epochs after the first where there are several: the first
    carries one-off costs (cuDNN's search, torch.compile) that later epochs do not."""
    epochs = timing.get("epochs") or []
    steady = epochs[1:] or epochs
    train = sum(e.get("wall_s", 0.0) for e in steady)
    evals = sum(e.get("eval_s", 0.0) for e in steady)
    total = train + evals
    if total <= 0:
        return {}
    data = sum(e.get("data_s", 0.0) for e in steady)
    comm = sum(e.get("allreduce_s", 0.0) for e in steady)
    # All-reduces overlap the backward pass: the share is time they were in flight, which
    # compute may have hidden, so it is reported beside compute, not taken out of it.
    return {"data": data / total, "compute": max(train - data, 0.0) / total, "allreduce": comm / total,
            "eval": evals / total, "train_share_in_allreduce": comm / train if train else 0.0,
            "train_share_waiting_on_data": data / train if train else 0.0}


def diagnose(summary: dict, timing: dict, spec: dict | None = None, environment: dict | None = None) -> list[Finding]:
    """`environment`: the run's env.json, where its worker threads are recorded."""
    found = _threads_fight((environment or {}).get("threads"))
    share = shares(timing)
    data = (spec or {}).get("data", {})
    waiting = share.get("train_share_waiting_on_data", 0.0)
    if waiting >= DATA_SHARE:
        workers = data.get("num_workers")
        more = f"raise data.num_workers (now {workers})" if workers is not None else "use more DataLoader workers"
        found.append(Finding(
            "data-bound", f"the training step waited for its next batch {waiting:.0%} of the time",
            f"{more}, or do the per-sample work (decoding, transforms) once up front or on whole batches; "
            "gpujob's built-in datasets are kept as tensors on the device and never wait"))
    total, first = timing.get("total_s"), timing.get("time_to_first_step_s")
    if total and first and first / total >= STARTUP_SHARE:
        phases = timing.get("phases") or {}
        biggest = _biggest_phase(phases, first, timing.get("compile_s"))
        found.append(Finding(
            "start-up-bound", f"{first:.1f} s of the job's {total:.1f} s passed before its first step ended"
            + (f" ({biggest})" if biggest else ""),
            "train for longer per submission (more epochs) so start-up is paid once for more work"
            + ("; for a job this short, turn train.compile off" if timing.get("compile_s") else "")))
    comm = share.get("train_share_in_allreduce", 0.0)
    if summary.get("world_size", 1) > 1 and comm >= COMM_SHARE:
        found.append(Finding(
            "communication-bound", f"gradient all-reduces were in flight for {comm:.0%} of the training time "
            f"across {summary['world_size']} workers",
            "raise data.batch_size (more compute per all-reduce) or use fewer workers"
            + ("; on one CPU the workers also share its cores" if summary.get("device") == "cpu" else
               ", or GPUs joined by NVLink (A100, H100) rather than PCIe")))
    mfu = summary.get("mfu")
    if mfu is not None and mfu < LOW_MFU:
        cheaper = "" if summary.get("precision") != "fp32" else "train.precision: bf16 (tensor cores), "
        found.append(Finding(
            "device-underused", f"{summary.get('achieved_tflops') or 0:.2f} TFLOP/s is {mfu:.1%} of the "
            f"device's {summary.get('peak_tflops_per_device') or 0:g} TFLOP/s peak",
            f"give it more work per step: {cheaper}a larger data.batch_size, train.compile: true; "
            "or rent a smaller GPU, which this job would keep busier for less"))
    if not any(f.kind == "device-underused" for f in found):
        found += _idle_gpu(summary.get("utilisation"))
    return found


def _idle_gpu(utilisation: dict | None) -> list[Finding]:
    """A GPU that sat idle between kernels for half the sampled time or more: the steps do not keep
    it fed (the host prepares batches, launches small kernels, or waits on something else)."""
    if not utilisation or utilisation.get("device") != "cuda" or utilisation.get("samples", 0) < MIN_SAMPLES:
        return []
    busy = utilisation.get("mean_util_percent")
    if busy is None or busy >= LOW_BUSY_PERCENT:
        return []
    return [Finding(
        "device-underused", f"the GPU was busy {busy:.0f}% of the time on average ({utilisation['samples']} samples "
        "of NVML's utilisation, utilisation.jsonl)",
        "give it more work per step and less to wait for: a larger data.batch_size, more data.num_workers for a "
        "dataset of your own, train.compile: true; or rent a smaller GPU, which this job would keep busier for less")]


def _threads_fight(threads: dict | None) -> list[Finding]:
    """Threads past the cores the node's workers share take turns on them: each op waits for
    its slowest thread, and every worker slows down, while the time still counts as compute."""
    if threads is None or not oversubscribed(threads):
        return []
    workers, cores = threads.get("workers_on_node", 1), threads["cores_available"]
    fair = max(1, cores // max(1, workers))
    return [Finding(
        "threads-oversubscribed", f"{workers} worker(s) ran {threads['intra_op']} intra-op thread(s) each on "
        f"{cores} core(s) available ({threads['intra_op'] * workers} threads for {cores} cores: they fight)",
        f"set OMP_NUM_THREADS={fair} (or unset it: gpujob then gives each worker its share of the cores)")]


def _biggest_phase(phases: dict, first_step_s: float, compile_s: float | None) -> str:
    """The start-up phase that took longest: imports, data, model, or the first step itself."""
    marks = [("process start and imports", phases.get("loop_entered_s")),
             ("importing torch._dynamo (torch's optimizers load it, even without train.compile)",
              phases.get("dynamo_imported_s")), ("loading the data", phases.get("data_loaded_s")),
             ("building the model", phases.get("model_built_s")), ("the first step", first_step_s)]
    spans, before = [], 0.0
    for name, at in marks:
        if at is None:
            continue
        spans.append((at - before, name))
        before = at
    if not spans:
        return ""
    took, name = max(spans)
    extra = f", {compile_s:.1f} s of it compiling" if compile_s and name == "the first step" else ""
    return f"most of it {name}: {took:.1f} s{extra}"


def as_records(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


def lines(findings: list[Finding]) -> list[str]:
    if not findings:
        return ["no bottleneck found: data, start-up and communication each took a small share"]
    return [f.line() for f in findings]
