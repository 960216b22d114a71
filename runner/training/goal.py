"""The run's goal (train.stop_when) as an epoch-end stop rule, with the prediction of when it
will be met, and what summary.json says of it."""

from __future__ import annotations

import math
import statistics
import time

from runner.errors import bad_input
from runner.spec.targets import Condition, describe, measured, parse_target
from runner.training.meter import from_env
from runner.training.prediction import predict

TARGET = "target"  # summary.json's stopped_by when the goal was reached
RECENT_EPOCHS = 3  # the epochs whose length predicts the next ones'


class TargetRule:
    """Stop once every condition holds at an epoch's end; until then the epoch's record carries
    the prediction of when they will (`prediction`), where the curve so far supports one."""

    def __init__(self, conditions: list[Condition], epochs: int):
        self.conditions, self.epochs = conditions, epochs
        self.curves: dict[str, list[tuple[int, float]]] = {c.metric: [] for c in conditions}
        self.epoch_s: list[float] = []
        self.last_call: float | None = None

    def seen_before(self, records: list[dict]) -> None:
        """A resumed run: the epochs before its checkpoint, for the curve."""
        for record in records:
            self._note(record)
            self.epoch_s.append(record.get("wall_s") or 0.0)

    def __call__(self, record: dict) -> str | None:
        now = time.perf_counter()  # epoch to epoch: training, evaluation and checkpoints alike
        self.epoch_s.append(now - self.last_call if self.last_call is not None else record.get("wall_s") or 0.0)
        self.last_call = now
        self._note(record)
        if all(c.holds(self.value(record, c)) for c in self.conditions):
            return TARGET
        forecast = self.forecast(record["epoch"])
        if forecast:
            record["prediction"] = forecast
        return None

    def _note(self, record: dict) -> None:
        for c in self.conditions:
            value = measured(record, c.metric)
            if value is not None and math.isfinite(value):
                self.curves[c.metric].append((record["epoch"], float(value)))

    def forecast(self, epoch: int) -> dict | None:
        """When every condition will hold (the last of them), how long and how much until then."""
        predictions = [predict(c, self.curves[c.metric]) for c in self.conditions]
        if any(p is None for p in predictions):
            return None
        slowest = max(predictions, key=lambda p: p.epoch if p else 0)
        assert slowest is not None

        def met(at: float) -> int:  # the first whole epoch past this one at or after it
            return max(math.ceil(at - 1e-9), epoch + 1)
        at, low, high = met(slowest.epoch), met(slowest.low), met(slowest.high)
        seconds = (at - epoch) * statistics.median(self.epoch_s[-RECENT_EPOCHS:])
        meter = from_env()
        return {"epoch": at, "low": low, "high": high, "epochs_left": at - epoch, "seconds": round(seconds, 1),
                "usd": round(meter.usd_per_hour * seconds / 3600, 4) if meter else None,
                "within_epochs": at <= self.epochs, "fitted_epochs": slowest.from_epochs}

    @staticmethod
    def value(record: dict, c: Condition) -> float:
        value = measured(record, c.metric)
        if value is None:  # a user's step that never names it: said at the first epoch's end
            names = ", ".join(record.get("test_metrics") or {}) or "none"
            raise bad_input(f"train.stop_when.{c.metric}: the test split measured no value named {c.metric} "
                            f"(your train.step names: {names})")
        return float(value)


def target_rules(spec) -> list[TargetRule]:
    """The spec's target as a stop rule (none without train.stop_when)."""
    stop_when = spec.train.stop_when
    return [TargetRule(parse_target(stop_when, spec.train.step is not None), spec.train.epochs)] if stop_when else []


def target_summary(spec, stopped_by: str | None, records: list[dict], whole_wall_s: float,
                   usd: float | None) -> dict:
    """summary.json's account of the goal: whether it was met, and at what epoch, time and cost;
    and what was predicted at each epoch, to hold against it."""
    if not spec.train.stop_when:
        return {}
    conditions = parse_target(spec.train.stop_when, spec.train.step is not None)
    said: dict = {"target": describe(conditions), "target_met": stopped_by == TARGET}
    if stopped_by == TARGET:
        said.update({"target_epoch": records[-1]["epoch"], "target_wall_s": whole_wall_s, "target_usd": usd})
    said["target_predictions"] = [{"at_epoch": r["epoch"], **r["prediction"]} for r in records if r.get("prediction")]
    return said
