"""The spec's `sweep:` section: which fields to vary and how a sweep judges and bounds its trials.

Its own module (not model.py's Section) so that model.py can hold it as one field; what each axis
names and holds is checked against JobSpec by runner/sweeps/axes.py, where the axes from the command
line are checked too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

Sampler = Literal["grid", "random", "tpe"]
Pruner = Literal["none", "median", "halving"]


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    axes: dict[str, list[Any] | str] = Field(
        default_factory=dict, description="field path -> a list of values (a grid), or a range to sample: "
        "log(LOW,HIGH), uniform(LOW,HIGH), int(LOW,HIGH)")
    sampler: Sampler | None = Field(None, description="grid (every combination of the lists), random or tpe; "
                                    "default: grid when every axis is a list, else random")
    trials: PositiveInt | None = Field(None, le=10_000, description="how many trials random and tpe draw")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="the sampler's seed (each trial keeps train.seed)")
    metric: str = Field("test_loss", description="test_loss | test_accuracy | train_loss | a test metric of "
                        "your own train.step")
    goal: Literal["min", "max"] = Field("min", description="whether the best trial has the lowest or highest metric")
    pruner: Pruner = Field("none", description="none, median (Optuna's MedianPruner) or halving "
                           "(SuccessiveHalvingPruner): stop a losing trial at an epoch's end")
    max_parallel: PositiveInt = Field(1, le=1024, description="trials running at once")
    max_usd: PositiveFloat | None = Field(None, description="the most the whole sweep may cost on rented GPUs, US$")
