"""The commands that answer "which GPU, how fast, at what cost, and why": `gpujob gpus`,
`gpujob show`, `gpujob compare` and `gpujob estimate`. They read run folders and the GPU catalog
and start nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from runner.cli.app import RunArg, RunsDirOpt, SetOpt, SpecArg, app, load_job, print_rows, user_errors
from runner.errors import bad_input


@app.command()
@user_errors
def gpus():
    """The GPU catalog: memory, bandwidth, peak TFLOP/s, who rents it and at what price."""
    for line in catalog_table():
        typer.echo(line)


@app.command()
@user_errors
def show(run: str = RunArg, runs_dir: Path = RunsDirOpt):
    """One finished run on one screen: result, speed, where the time went, cost, diagnosis."""
    from runner.runs.view import find_finished
    from runner.reports.show import show_lines

    print_rows(show_lines(find_finished(run, runs_dir)))


@app.command()
@user_errors
def compare(runs: List[str] = typer.Argument(..., help="two or more run folders, or names under --runs-dir",
                                             metavar="RUN...", show_default=False),
            runs_dir: Path = RunsDirOpt,
            out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="new folder for compare.png and "
                                               "compare.json (default: a new compare-TIME folder under --runs-dir)")):
    """Finished runs side by side: speed, scaling, where the time went, loss, dollars."""
    from runner.reports.compare import compare as compare_runs
    from runner.reports.compare import table
    from runner.reports.compare_plot import plot_comparison
    from runner.runs.view import find_finished

    if len(runs) < 2:
        raise bad_input("compare: give two or more runs (the first is the baseline)")
    views = [find_finished(r, runs_dir) for r in runs]
    result = compare_runs(views)
    for line in table(result):
        typer.echo(line)
    folder = _new_output_folder(out, runs_dir)
    from runner.runs.files import atomic_write

    atomic_write(folder / "compare.json", (json.dumps(result, indent=2) + "\n").encode())
    plot_comparison(views, result["runs"], folder / "compare.png")
    typer.echo(f"wrote {folder / 'compare.png'} and compare.json")
    typer.echo(str(folder))


GpusOpt = typer.Option(None, "--gpus", metavar="TYPE[:N],...", help="GPU types to price, e.g. T4,L4,A10G,A100-80GB,H100 "
                       "(default those; the spec's count)")


@app.command()
@user_errors
def estimate(spec: Path = SpecArg, set_: Optional[List[str]] = SetOpt, runs_dir: Path = RunsDirOpt,
             gpus: Optional[str] = GpusOpt):
    """Estimate each GPU type's time and dollars for the whole job, and pick the cheapest and fastest."""
    for line in estimate_lines(load_job(spec, set_), gpus, runs_dir):
        typer.echo(line)


# `plan` names one thing in gpujob, a backend's plan (what --dry-run prints): this table was once
# `gpujob plan`, which still works for scripts written then.
app.command("plan", hidden=True)(user_errors(estimate.__wrapped__))


def _new_output_folder(out: Path | None, runs_dir: Path) -> Path:
    """A folder made for this comparison: never one that holds something already."""
    import time

    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise bad_input(f"--out: {out} is not a new or empty folder; gpujob compare never overwrites one")
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = Path(runs_dir) / (f"compare-{stamp}" + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise bad_input(f"--runs-dir: could not make a compare folder under {runs_dir}")


def catalog_table() -> list[str]:
    from runner.gpus import CATALOG, IMAGE_MIN_CAPABILITY, PRICE_SOURCES

    head = ("type", "memory", "bandwidth", "bf16 TFLOP/s", "fp32 TFLOP/s", "backends", "price per GPU-hour")
    rows = [head]
    for gpu in CATALOG:
        tensor = f"{gpu.tensor_tflops:g}" if gpu.bf16 else f"- (fp16 {gpu.tensor_tflops:g})"
        imaged = gpu.compute_capability >= IMAGE_MIN_CAPABILITY  # gpujob's image runs on it
        offered = [who for who in gpu.provider_names if imaged]  # the services that rent it, as the catalog says
        offered += ["docker", "slurm"] if imaged else ["slurm (your own torch: the image's needs sm 7.5+)"]
        prices = [f"${price:.2f} {who}" if price else f"free on {who}" for who, price in gpu.price_per_hour.items()]
        prices += [f"{who}: market" for who in gpu.provider_names if imaged and who not in gpu.price_per_hour]
        rows.append((gpu.name, f"{gpu.memory_gb} GB", f"{gpu.bandwidth_gbs:,.0f} GB/s", tensor,
                     f"{gpu.fp32_tflops:g}", ", ".join(offered), "; ".join(prices) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("peaks: NVIDIA's datasheets, dense (no sparsity); docker and slurm run on whatever cards your "
                 "machine or cluster has")
    lines += [f"{who}: {source}" for who, source in PRICE_SOURCES.items()]
    return lines


def _reason(refusal: str) -> str:
    """A refusal as a table cell: its cause, without the field's name or the advice after ';'."""
    return refusal.split(": ", 1)[-1].split(";")[0]


def estimate_lines(spec, gpus: str | None, runs_dir: Path) -> list[str]:
    from runner.reports.estimate import ASSUMPTIONS, PLAN_GPUS, finished_runs, job_shape, on_gpu
    from runner.reports.estimate import human_duration as _duration
    from runner.gpus import parse_gpu

    job = job_shape(spec)  # a factory dataset is loaded here, as the job loads it
    if job is None:
        raise bad_input(f"model.name: {spec.model.name} and its step could not be run on a batch here (on the meta "
                        "device, or on two samples), so the job's arithmetic cannot be counted; run it once, then "
                        "compare")
    default_count = spec.resources.gpu_request.count if spec.resources.gpu_request else 1
    requests = []
    for item in (gpus.split(",") if gpus else PLAN_GPUS):
        try:
            request = parse_gpu(item)
        except ValueError as err:
            raise bad_input(f"--gpus: {err}") from None
        if request is None:
            raise bad_input(f"--gpus: '{item}' is not a GPU type; `gpujob gpus` lists them")
        count = request.count if ":" in item else default_count
        requests.append((request.type, count))
    runs = finished_runs(runs_dir)
    estimates = [on_gpu(job, gpu, count, runs) for gpu, count in requests]
    lines = [f"estimate for {job.name}: {spec.model.name} on {job.dataset}, batch {job.global_batch}, {job.epochs} epoch(s) "
             f"of {job.steps_per_epoch} steps, {job.precision}",
             f"counted: {job.flops_per_sample / 1e9:,.3g} GFLOP per sample per training step, {job.parameters:,} "
             f"parameters, {job.kernels} kernels per step"]
    head = ("gpu", "fits", "s/epoch", "total", "$/hour", "$ total", "how")
    rows = [head]
    for e in estimates:
        fits = "yes" if e.fits else f"no ({e.memory_bytes / 1e9:.1f} GB a card)"
        rows.append((f"{e.gpu} x{e.count}", f"no ({_reason(e.refused)})" if e.refused else fits,
                     f"{e.epoch_s:,.2f}", _duration(e.total_s),
                     f"{e.usd_per_hour:.2f}" if e.usd_per_hour is not None else "market",
                     f"{e.total_usd:.2f}" if e.total_usd is not None else "-",
                     f"measured ({Path(e.measured).name})" if e.measured else f"estimate, {e.bound}-bound"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    fitting = [e for e in estimates if e.fits and not e.refused]
    priced = [e for e in fitting if e.total_usd is not None]
    if priced:
        best = min(priced, key=lambda e: (e.total_usd, e.total_s))
        lines.append(f"cheapest: {best.gpu} x{best.count}, about ${best.total_usd:.2f} ({best.price_source})")
    if fitting:
        best = min(fitting, key=lambda e: e.total_s)
        lines.append(f"fastest: {best.gpu} x{best.count}, {_duration(best.total_s)}")
    if not fitting:
        lines.append("none of these can run it: see the fits column; `gpujob gpus` lists the others")
    startups = {(round(e.startup_s), e.startup_how) for e in estimates if e.total_usd is not None}
    for seconds, how in sorted(startups):
        lines.append(f"'$ total' includes ~{seconds} s of billed start-up a run (the container's start, then the "
                     f"job's {how})")
    lines.append(f"estimates assume {ASSUMPTIONS}; 'measured' rows use a finished run of this model, data and batch "
                 f"on that card from {runs_dir}")
    return lines

