"""The run's goal (train.stop_when) as an epoch-end stop rule, and what summary.json says of it."""

from __future__ import annotations

from runner.errors import bad_input
from runner.spec.targets import Condition, describe, measured, parse_target

TARGET = "target"  # summary.json's stopped_by when the goal was reached


class TargetRule:
    """Stop once every condition holds at an epoch's end."""

    def __init__(self, conditions: list[Condition]):
        self.conditions = conditions

    def __call__(self, record: dict) -> str | None:
        return TARGET if all(c.holds(self.value(record, c)) for c in self.conditions) else None

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
    return [TargetRule(parse_target(stop_when, spec.train.step is not None))] if stop_when else []


def target_summary(spec, stopped_by: str | None, records: list[dict], whole_wall_s: float,
                   usd: float | None) -> dict:
    """summary.json's account of the goal: whether it was met, and at what epoch, time and cost."""
    if not spec.train.stop_when:
        return {}
    conditions = parse_target(spec.train.stop_when, spec.train.step is not None)
    said = {"target": describe(conditions), "target_met": stopped_by == TARGET}
    if stopped_by == TARGET:
        said.update({"target_epoch": records[-1]["epoch"], "target_wall_s": whole_wall_s, "target_usd": usd})
    return said
