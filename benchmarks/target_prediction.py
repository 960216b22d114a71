"""How good is the target's prediction? Each task is trained once here, with no target, for its
whole length; then, for each target, the prediction the job would have printed at epochs 2, 4 and
8 (the same fit, runner/training/goal.py's TargetRule on the epochs so far) is held against the
epoch the curve actually met the target at.

    uv run python benchmarks/target_prediction.py              # digits and synthetic, 30 epochs each
    uv run python benchmarks/target_prediction.py --epochs 20

Error = predicted epoch - actual epoch; "none" where the fit gave no prediction (fewer than 3
epochs, a curve that does not improve, or one too noisy to bound), which is what the job prints
then too. Writes benchmarks/results/target_prediction-<hostname>.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.spec.targets import measured, parse_target  # noqa: E402
from runner.training.goal import TargetRule  # noqa: E402

AT_EPOCHS = (2, 4, 8)
TASKS = {
    "digits": ({"model": {"name": "mlp"}, "data": {"dataset": "digits", "batch_size": 64},
                "optimizer": {"name": "sgd", "lr": 0.01}},
               [{"test_loss": "<= 0.6"}, {"test_accuracy": ">= 0.90"}]),
    "synthetic": ({"model": {"name": "mlp"}, "optimizer": {"name": "sgd", "lr": 0.002},
                   "data": {"dataset": "synthetic", "batch_size": 64,
                            "synthetic": {"shape": [1, 16, 16], "num_classes": 10, "train_samples": 2048,
                                          "test_samples": 512}}},
                  [{"test_loss": "<= 0.2"}, {"test_loss": "<= 0.1"}]),
}


def train(name: str, sections: dict, epochs: int, where: Path) -> list[dict]:
    """The task's epoch records, from one `gpujob run` here."""
    spec = where / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({"name": name, **sections, "train": {"epochs": epochs, "log_every_steps": 1000}}))
    runs = where / "runs"
    subprocess.run([sys.executable, "-m", "runner.cli", "run", str(spec), "--runs-dir", str(runs)], check=True,
                   stdout=subprocess.DEVNULL)
    (folder,) = runs.glob(f"{name}-*")
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def judged(records: list[dict], stop_when: dict, epochs: int) -> dict:
    conditions = parse_target(stop_when, user_step=False)
    actual = next((r["epoch"] for r in records if all(c.holds(measured(r, c.metric)) for c in conditions)), None)
    predictions = {}
    for at in AT_EPOCHS:
        if actual is not None and at >= actual:
            predictions[at] = "met by then"
            continue
        rule = TargetRule(conditions, epochs)
        rule.seen_before(records[:at])
        forecast = rule.forecast(at)
        predictions[at] = forecast and {k: forecast[k] for k in ("epoch", "low", "high")}
    return {"target": stop_when, "actual_epoch": actual, "predicted_at": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="gpujob-prediction-") as scratch:
        for name, (sections, targets) in TASKS.items():
            records = train(name, sections, args.epochs, Path(scratch))
            results += [{"task": name, **judged(records, stop_when, args.epochs)} for stop_when in targets]
    print(f"{'task':<10} {'target':<22} {'met at':>6}  " + "  ".join(f"{'at epoch ' + str(k):<24}" for k in AT_EPOCHS))
    errors = []
    for r in results:
        (metric, condition), = r["target"].items()
        cells = []
        for at in AT_EPOCHS:
            p = r["predicted_at"][at]
            if isinstance(p, dict) and r["actual_epoch"] is not None:
                error = p["epoch"] - r["actual_epoch"]
                errors.append(abs(error))
                cells.append(f"{p['epoch']} ({p['low']}-{p['high']}) err {error:+d}")
            else:
                cells.append(p if isinstance(p, str) else "none")
        met = r["actual_epoch"] if r["actual_epoch"] is not None else "not met"
        print(f"{r['task']:<10} {metric + ' ' + condition:<22} {met:>6}  " + "  ".join(f"{c:<24}" for c in cells))
    if errors:
        print(f"mean absolute error over {len(errors)} predictions: {sum(errors) / len(errors):.1f} epochs")
    out = REPO / "benchmarks" / "results" / f"target_prediction-{socket.gethostname()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"epochs": args.epochs, "results": results}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
