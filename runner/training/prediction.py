"""When will the run reach its target? Two curves fitted to the epochs so far, the better one
stated with its uncertainty, or nothing where neither fit can support one.

What shrinks as a run learns is its distance from perfect: 1 - accuracy, or a loss (whose floor
is taken as 0). Two shapes are fitted to it by least squares on its logarithm: a power law of the
epoch, d = a t^-b (a straight line in log-log space), and an exponential, d = a e^-bt; the one
with the smaller residual is kept (on the runs measured by benchmarks/target_prediction.py, the
exponential follows a falling loss, the power law an accuracy's plateau). The target's distance is
reached where the line meets it; the range is the line's slope +- one standard error, kept through
the points' centre: the fit's own uncertainty, not the curve's future (a curve that changes shape
can fall outside it). A value of the user's own step with no known floor, where higher is better,
is fitted as y = a + b ln t. No prediction from fewer than MIN_POINTS epochs, from a curve that
does not improve, or where the slower bound never reaches the target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from runner.spec.targets import Condition

MIN_POINTS = 3  # epochs: two points always fit a line exactly, with no error to state
MAX_EPOCH = 1e5  # past this, a prediction says nothing useful
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
    target = distance(c, c.value)
    if target is None:  # y = a + b ln t, rising to the target
        rising = _reached(c, [math.log(t) for t, _ in points], [v for _, v in points], c.value, math.exp)
        return rising[0] if rising else None
    gaps = [distance(c, v) for _, v in points]
    if target <= 0 or any(g is None or g <= 0 for g in gaps):
        return None  # a perfect score or a loss at zero: neither curve reaches it
    ys = [-math.log(g) for g in gaps if g is not None]  # rising as the distance falls
    fits = [_reached(c, [math.log(t) for t, _ in points], ys, -math.log(target), math.exp),  # power law
            _reached(c, [float(t) for t, _ in points], ys, -math.log(target), lambda x: x)]  # exponential
    stated = [f for f in fits if f is not None]
    return min(stated, key=lambda f: f[1])[0] if stated else None


def _reached(c: Condition, xs: list[float], ys: list[float], goal: float, epoch_of) -> tuple[Prediction, float] | None:
    """Where the least-squares line through (xs, ys) reaches `goal`, as an epoch (epoch_of(x)),
    with the range of its slope +- one standard error (the line kept through the points' centre),
    and the fit's residual; None where the line does not rise or its slower bound never gets there."""
    fit = _line(xs, ys)
    if fit is None:
        return None
    slope, mx, my, se, residual = fit

    def when(rate: float) -> float:
        return epoch_of(mx + (goal - my) / rate) if rate > 0 else math.inf
    epoch, low, high = when(slope), when(slope + se), when(slope - se)
    if slope <= 0 or not math.isfinite(high) or high > MAX_EPOCH:
        return None  # not improving, or too uncertain to bound
    return Prediction(c.metric, epoch, low, high, len(xs)), residual


def _line(xs: list[float], ys: list[float]) -> tuple[float, float, float, float, float] | None:
    """Least squares through the points: the slope, the points' centre (mean x, mean y), the
    slope's standard error and the residual sum of squares."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0 or n < 3:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, mx, my, math.sqrt(residual / (n - 2) / sxx), residual
