#!/usr/bin/env bash
# gpu_check.sh: the one prepared script for a lent GPU (issue 17), about 6 minutes on one H100.
#
# In one device call it runs, each part under its own time limit, a failed part recorded and the
# rest still run:
#   1. wheels      installs pydantic and its four needs from .gpu_wheels/ (the device machine has
#                  torch, torchvision, numpy, matplotlib, scikit-learn, pyyaml, typer, rich and
#                  packaging, but no pydantic and no internet); skipped where pydantic imports
#   2. env         python, torch, CUDA, the GPU's name and memory, nvidia-smi; gpujob's CLI imports
#   3. cuda_paths  benchmarks/cuda_paths.py: AMP bf16 and fp16 (the gradient scaler) through `gpujob run`,
#                  SIGTERM mid-run then `--resume` against the uninterrupted run (bit-identical, or
#                  judged against two uninterrupted runs), the error for fp16 without a GPU
#   4. sampler     benchmarks/sampler_check.py: the device sampler (NVML) sees the GPU busy under matmuls
#                  and idle in a sleep, and what sampling every 0.5 s costs the matmuls (issue 26)
#   5. gpu_speed   benchmarks/gpu_speed.py --device cuda: gpujob vs a tight loop vs the notebook loop,
#                  ResNet-18 (50,000 3x32x32, batch 512, bf16) and SimpleNN (60,000 28x28, batch 64),
#                  without and with torch.compile: samples/s, TFLOP/s, MFU, first step, compile, memory
#   6. merge       benchmarks/results/gpu_check-<gpu>.json: every part's exit code, time and log tail,
#                  the checks and the ratios; then a summary, printed last
# Results: benchmarks/results/gpu_check-<gpu>.json and gpu_speed-<gpu>.json, and under $OUT (where
# the device tool sets it) those two and gpu_check.log.
#
# Fill .gpu_wheels/ once, here, before the call (git-ignored; 2.8 MB; the versions uv.lock pins):
#   uv run --with pip python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .gpu_wheels pydantic==2.14.3 pydantic-core==2.50.4 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 nvidia-ml-py==13.615.71
# The call: the device tool's run with command `bash benchmarks/gpu_check.sh`, carry [".gpu_wheels"],
# timeout_s 420; then copy gpu_check-*.json and gpu_speed-*.json from its files into benchmarks/results/.
#
# A dry run of the same script on this machine's CPU, at tiny sizes (about 2 minutes on 2 cores):
#   GPU_CHECK_PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --cpu
#
# Environment: GPU_CHECK_PYTHON (default python3), GPU_CHECK_BUDGET_S (default 345, the whole script),
# GPU_CHECK_RESULTS (default benchmarks/results).
set -u

cd "$(dirname "$0")/.." || exit 2
PY=${GPU_CHECK_PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-345}
RESULTS=${GPU_CHECK_RESULTS:-benchmarks/results}
DEVICE=cuda
[ "${1:-}" = "--cpu" ] && DEVICE=cpu
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
LOG=$WORK/gpu_check.log
START=$SECONDS
export PYTHONUNBUFFERED=1
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""
mkdir -p "$RESULTS"
: >"$WORK/parts.tsv"

left() { echo $((BUDGET - (SECONDS - START))); }

# part NAME LIMIT_S COMMAND...: run it under `timeout`, its output to the log; record name, exit code, seconds.
part() {
    local name=$1 limit=$2 began=$SECONDS rc
    shift 2
    if [ "$limit" -lt 15 ]; then
        printf '%s\t%s\t%s\n' "$name" "skipped" 0 >>"$WORK/parts.tsv"
        echo "[gpu_check] $name: skipped, the budget is spent" | tee -a "$LOG"
        return
    fi
    echo "[gpu_check] $name: limit ${limit}s, at $((SECONDS - START))s of ${BUDGET}s" | tee -a "$LOG"
    { echo "===== $name: $*"; } >>"$LOG"
    if declare -F "$1" >/dev/null; then  # a function of this script: `timeout` runs programs, so through bash
        timeout -k 10 "$limit" bash -c "$*" >"$WORK/$name.log" 2>&1
    else
        timeout -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    fi
    rc=$?
    cat "$WORK/$name.log" >>"$LOG"
    printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - began)) >>"$WORK/parts.tsv"
    echo "[gpu_check] $name: exit $rc after $((SECONDS - began))s" | tee -a "$LOG"
}

install_wheels() {
    if "$PY" -c "import pydantic, pynvml" 2>/dev/null; then
        echo "pydantic and pynvml are already there: nothing to install"
        return 0
    fi
    ls .gpu_wheels/*.whl || { echo "no .gpu_wheels/*.whl: fill it here first (see this script's top) and carry it"; return 3; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .gpu_wheels/*.whl
}

env_report() {
    "$PY" - "$DEVICE" "$WORK/env.json" <<'EOF'
import json, platform, re, socket, subprocess, sys
import torch
device, out = sys.argv[1:3]
cuda = device == "cuda" and torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version() if cuda else None, "device": device, "device_name": name,
       "memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
       "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None, "host": socket.gethostname(),
       "cpu_count": __import__("os").cpu_count(),
       "label": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") if cuda else f"cpu-{socket.gethostname()}-dry"}
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                        "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.TimeoutExpired) as err:
    env["nvidia_smi"] = f"not run: {err}"
import runner.cli.main, runner.spec.load  # noqa: F401,E401  gpujob's CLI and spec import here (pydantic, typer, yaml)
import pydantic
env["pydantic"] = pydantic.VERSION
print(json.dumps(env, indent=2))
open(out, "w").write(json.dumps(env, indent=2) + "\n")
if device == "cuda" and not cuda:
    sys.exit("torch sees no CUDA device")
EOF
}

export PY WORK DEVICE
export -f install_wheels env_report
echo "[gpu_check] device $DEVICE, python $PY, budget ${BUDGET}s, work folder $WORK" | tee "$LOG"
part wheels 60 install_wheels
[ -d "$WORK/site" ] && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
part env 60 env_report
LABEL=$(sed -n 's/^  "label": "\(.*\)",\{0,1\}$/\1/p' "$WORK/env.json" 2>/dev/null | head -1)
[ -n "$LABEL" ] || LABEL="$DEVICE-unknown"

# The CUDA paths: short and bounded (about 60-80 s on an H100), first, so a slow benchmark cannot crowd them out.
PATHS_LIMIT=$(( $(left) < 110 ? $(left) : 110 ))
part cuda_paths "$PATHS_LIMIT" "$PY" benchmarks/cuda_paths.py --device "$DEVICE" --budget-s $((PATHS_LIMIT - 35)) \
    --out "$WORK/cuda_paths.json"

part sampler 45 "$PY" benchmarks/sampler_check.py --device "$DEVICE" --seconds 6 --out "$WORK/sampler_check.json"

# The benchmark takes what is left; it starts no run past its own budget, and writes its JSON after every run.
SPEED_LIMIT=$(( $(left) - 12 ))
SPEED_ARGS=(--device "$DEVICE" --budget-s $((SPEED_LIMIT - 20)) --device-label "$LABEL"
            --out "$RESULTS/gpu_speed-$LABEL.json")
if [ "$DEVICE" = cpu ]; then  # the dry run: tiny sizes, the same code paths
    SPEED_ARGS+=(--resnet-samples 64 --resnet-test-samples 32 --resnet-batch 32 --mlp-samples 2048
                 --mlp-test-samples 512)
fi
part gpu_speed "$SPEED_LIMIT" "$PY" benchmarks/gpu_speed.py "${SPEED_ARGS[@]}"

"$PY" - "$WORK" "$RESULTS" "$LABEL" "$DEVICE" "$BUDGET" $((SECONDS - START)) <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, time
from pathlib import Path
work, results, label, device, budget, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:5], *map(int, sys.argv[5:])

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return {"missing": f"{path}: {err}"}

parts = []
for line in (work / "parts.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    log = work / f"{name}.log"
    parts.append({"name": name, "exit_code": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                  "seconds": int(seconds), "ok": rc == "0",
                  "timed_out": rc in ("124", "137"), "log_tail": log.read_text(errors="replace")[-3000:] if log.exists() else ""})
env = load(work / "env.json")
speed_file = results / f"gpu_speed-{label}.json"
speed, paths = load(speed_file), load(work / "cuda_paths.json")
check = {"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device, "label": label,
         "dry_run_on_cpu": device == "cpu", "budget_s": budget, "elapsed_s": elapsed, "env": env, "parts": parts,
         "cuda_paths": paths, "sampler": load(work / "sampler_check.json"), "gpu_speed_file": str(speed_file),
         "gpu_speed_ratios": {name: c.get("ratios") for name, c in speed.get("cases", {}).items()},
         "gpu_speed_failed": speed.get("failed"), "gpu_speed_skipped": speed.get("skipped")}
out = results / f"gpu_check-{label}.json"
out.write_text(json.dumps(check, indent=2) + "\n")

print(f"\n===== gpu_check on {env.get('device_name', device)} ({label}): {elapsed} s of {budget} s")
for p in parts:
    print(f"  {p['name']:<11} {'skipped' if p['skipped'] else 'exit ' + str(p['exit_code'])}"
          f"{' (timed out)' if p['timed_out'] else ''}  {p['seconds']} s")
for name, c in paths.get("checks", {}).items():
    what = c.get("verdict") or c.get("message") or c.get("error") or ""
    extra = f" test_accuracy {c['test_accuracy']:.3f}, {c['samples_per_s']:.0f} samples/s" if "samples_per_s" in c else ""
    print(f"  {name:<16} {'ok' if c.get('ok') else 'FAILED'}{extra} {what[:160]}")
sampler = check["sampler"]
if "busy" in sampler:
    print(f"  sampler          {'ok' if sampler.get('ok') else 'FAILED'}: busy {(sampler['busy'] or {}).get('mean_util_percent')}%, "
          f"idle {(sampler['idle'] or {}).get('mean_util_percent')}%, matmuls sampled/alone "
          f"{sampler.get('sampled_over_alone') or 0:.3f}x")
for name, c in speed.get("cases", {}).items():
    for mode, runs in c.get("runs", {}).items():
        line = ", ".join(f"{kind} {r['steady']['samples_per_s']:.0f}" for kind, r in runs.items())
        if line:
            print(f"  {name} compile {mode}: samples/s {line}")
    for key, value in (c.get("ratios") or {}).items():
        print(f"  {name} {key}: {value:.3f}x")
for line in (speed.get("failed") or []) + (speed.get("skipped") or []):
    print(f"  gpu_speed: {line[:200]}")
print(f"wrote {out} and {speed_file}")
EOF

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RESULTS/gpu_check-$LABEL.json" "$RESULTS/gpu_speed-$LABEL.json" "$LOG" "$OUT/" 2>/dev/null
    echo "[gpu_check] copied to \$OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
echo "[gpu_check] done in $((SECONDS - START))s"
