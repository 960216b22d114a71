"""`train.stop_when`: the goal a run stops at, as conditions on what each epoch measures.

`{test_accuracy: ">= 0.95"}` is met at the end of the first epoch whose test accuracy is at
least 0.95; with several conditions, all must hold at the same epoch. A metric is one the epoch
records (test_accuracy, test_loss, train_loss) or, with a user's train.step, a value that step
names, as measured on the test split.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Callable

from runner.spec.reading import _did_you_mean

BUILTIN_METRICS = ("test_accuracy", "test_loss", "train_loss")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
CONDITION = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
NAME = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"

    @property
    def higher_is_better(self) -> bool:
        return self.op in (">=", ">")

    def holds(self, measured: float) -> bool:
        return math.isfinite(measured) and COMPARISONS[self.op](measured, self.value)


def parse_condition(metric: str, text: object) -> Condition:
    """`test_accuracy`, `">= 0.95"` -> Condition; ValueError naming what is wrong."""
    if not NAME.match(metric):
        raise ValueError(f"'{metric}' is not a metric name (test_accuracy, test_loss, train_loss or a value your "
                         "train.step names)")
    match = CONDITION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{metric}: '{text}' is not a condition; write e.g. \">= 0.95\" or \"<= 0.2\" "
                         f"(one of {', '.join(COMPARISONS)} and a number, quoted)")
    return Condition(metric, match.group(1), float(match.group(2)))


def parse_target(conditions: dict[str, object], user_step: bool) -> list[Condition]:
    """The spec's stop_when as conditions. Without a user's step only the builtin metrics exist;
    with one, accuracy does not (its step reports a loss and its own named values)."""
    parsed = [parse_condition(str(metric), text) for metric, text in conditions.items()]
    for c in parsed:
        if not user_step and c.metric not in BUILTIN_METRICS:
            raise ValueError(f"'{c.metric}' is not a metric the default step measures: use one of "
                             f"{', '.join(BUILTIN_METRICS)} (a value of your own needs train.step)"
                             f"{_did_you_mean(c.metric, BUILTIN_METRICS)}")
        if user_step and c.metric == "test_accuracy":
            raise ValueError("test_accuracy is measured by the default step only; with train.step use test_loss, "
                             "train_loss or a value your step names")
        if c.metric == "test_accuracy" and not 0 <= c.value <= 1:
            raise ValueError(f"test_accuracy is a fraction from 0 to 1, not {c.value:g} (write 0.95 for 95%)")
    return parsed


def measured(record: dict, metric: str) -> float | None:
    """The metric's value in an epoch record; None when the record lacks it."""
    if metric == "train_loss":
        return record.get("loss")
    if metric in ("test_accuracy", "test_loss"):
        return record.get(metric)
    return (record.get("test_metrics") or {}).get(metric)


def describe(conditions: list[Condition]) -> str:
    return " and ".join(map(str, conditions))
