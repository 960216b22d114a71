"""When will the run reach its target? A power law fitted to the curve so far, stated with its
uncertainty, or not at all where the fit cannot support one.

What shrinks as a run learns is its distance from perfect: 1 - accuracy, or a loss (whose floor
is taken as 0). Learning curves fall about as a power of the epoch, d(t) = a * t^-b, a straight
line in log-log space: least squares there gives a and b, and the target's distance d* is reached
at t* = (a / d*)^(1/b). The uncertainty is the slope's standard error: t* at b - se and b + se.
A value of the user's own step with no known floor, where higher is better, is fitted as
y = a + b ln t instead. No prediction from fewer than MIN_POINTS epochs, from a curve that does not
improve (b <= 0), or where the slower bound never reaches the target (b - se <= 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from runner.spec.targets import Condition

MIN_POINTS = 3  # epochs: two points always fit a line exactly, with no error to state
SKIP_FIRST = 1  # the first epoch's evaluation is mid-warm-up and off the curve when there are enough others


@dataclass(frozen=True)
class Prediction:
    metric: str
    epoch: float  # the epoch the fit reaches the target at
    low: float  # the same with the slope one standard error steeper
    high: float  # ... and one standard error shallower
    from_epochs: int  # how many epochs the fit saw

    def to_record(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def distance(c: Condition, value: float) -> float | None:
    """How far `value` is from perfect, for the power law: None where it has no known floor."""
    if c.metric == "test_accuracy":
        return 1.0 - value
    if not c.higher_is_better:
        return value  # a loss, or a value of the user's that shrinks: floor 0
    return None


def predict(c: Condition, points: list[tuple[int, float]]) -> Prediction | None:
    """The epoch at which the curve `points` ((epoch, value), in order) reaches the condition."""
    if len(points) > MIN_POINTS + SKIP_FIRST:
        points = points[SKIP_FIRST:]
    if len(points) < MIN_POINTS:
        return None
    xs = [math.log(t) for t, _ in points]
    target = distance(c, c.value)
    if target is None:  # y = a + b ln t, rising to the target
        ys, goal = [v for _, v in points], c.value
    else:  # -ln d = -ln a + b ln t, rising as the distance falls
        gaps = [distance(c, v) for _, v in points]
        if target <= 0 or any(g is None or g <= 0 for g in gaps):
            return None  # a perfect score or a loss at zero: no power law reaches it
        ys, goal = [-math.log(g) for g in gaps if g is not None], -math.log(target)
    fit = _line(xs, ys)
    if fit is None:
        return None
    slope, mx, my, se = fit

    def when(rate: float) -> float:  # the line through the points' centre, at this slope
        return math.exp(mx + (goal - my) / rate) if rate > 0 else math.inf
    epoch, low, high = when(slope), when(slope + se), when(slope - se)
    if slope <= 0 or not math.isfinite(high) or high > 1e6:
        return None  # not improving, or too uncertain to bound
    return Prediction(c.metric, epoch, low, high, len(points))


def _line(xs: list[float], ys: list[float]) -> tuple[float, float, float, float] | None:
    """Least squares through the points: the slope, the points' centre (mean x, mean y) and the
    slope's standard error."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0 or n < 3:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, mx, my, math.sqrt(residual / (n - 2) / sxx)
