"""A sweep's axes: the spec fields it varies, each a list of values or a range to sample, from the
command line (`--grid optimizer.lr=0.01,0.003`, `--grid optimizer.lr=log(1e-4,1e-1)`) or from the
spec's `sweep.axes`. Checked before anything runs: the field exists in the spec and every value
(a range's both ends) is one the spec accepts; a mistake is one line naming the axis, exit 2."""

from __future__ import annotations

import copy
import itertools
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from runner.errors import bad_input
from runner.spec.load import validate_spec
from runner.spec.model import JobSpec
from runner.spec.reading import _did_you_mean, _shown

RANGE = re.compile(r"^\s*(log|uniform|int)\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)\s*$")
FIELD = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
NOT_AXES = ("name", "sweep")  # a trial's name is the sweep's to give; a sweep does not nest


@dataclass(frozen=True)
class Axis:
    """One varied field: `values` (a grid's list, or the choices a sampler draws from), or a range
    LOW..HIGH with a `scale` (log, uniform, int). `origin` is where it was written, for messages."""

    field: str
    values: tuple = ()
    scale: str | None = None
    low: float | None = None
    high: float | None = None
    origin: str = ""

    @property
    def is_range(self) -> bool:
        return self.scale is not None

    def describe(self) -> str:
        if self.is_range:
            return f"{self.scale}({_number(self.low)},{_number(self.high)})"
        return ",".join(str(v) for v in self.values)

    def suggest(self, trial) -> Any:
        """This axis's value for an Optuna trial (what its sampler picks)."""
        if not self.is_range:
            return trial.suggest_categorical(self.field, list(self.values))
        if self.scale == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high))  # type: ignore[arg-type]
        return trial.suggest_float(self.field, self.low, self.high, log=self.scale == "log")

    def to_json(self) -> dict:
        if self.is_range:
            return {"field": self.field, "scale": self.scale, "low": self.low, "high": self.high}
        return {"field": self.field, "values": list(self.values)}

    @classmethod
    def from_json(cls, data: dict) -> "Axis":
        if "scale" in data:
            return cls(data["field"], scale=data["scale"], low=data["low"], high=data["high"], origin="sweep.json")
        return cls(data["field"], tuple(data["values"]), origin="sweep.json")


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_value(text: str) -> Any:
    """A value as written on the command line: an int, a float (1e-4 too), true/false/null, or text."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text.lower(), text)


def from_option(text: str) -> Axis:
    """`--grid FIELD=V1,V2,...` or `--grid FIELD=log(LOW,HIGH)` (also uniform, int)."""
    origin = f"--grid {_shown(text)}"
    field, sep, values = text.partition("=")
    field = field.strip()
    if not sep or not FIELD.match(field):
        raise bad_input(f"{origin}: expected FIELD=V1,V2,... or FIELD=log(LOW,HIGH), e.g. optimizer.lr=0.01,0.003")
    if RANGE.match(values):
        return _range(field, values, origin)
    parts = [part for part in values.split(",") if part.strip()]
    if not parts:
        raise bad_input(f"{origin}: an empty grid; give at least one value, e.g. {field}=V1,V2")
    return Axis(field, tuple(parse_value(part) for part in parts), origin=origin)


def from_spec(axes: dict[str, Any], source: str, lines: dict) -> list[Axis]:
    """The spec's `sweep.axes`: field -> a list, or a range written as text."""
    out = []
    for field, value in axes.items():
        key = ("sweep", "axes", field)
        origin = f"{source}:{lines[key]}: sweep.axes.{field}" if key in lines else f"{source}: sweep.axes.{field}"
        if isinstance(value, list):
            if not value:
                raise bad_input(f"{origin}: an empty grid; give at least one value")
            out.append(Axis(field, tuple(value), origin=origin))
        elif isinstance(value, str) and RANGE.match(value):
            out.append(_range(field, value, origin))
        else:
            raise bad_input(f"{origin}: expected a list of values or log(LOW,HIGH), uniform(LOW,HIGH), int(LOW,HIGH), "
                            f"not {_shown(str(value))}")
    return out


def _range(field: str, text: str, origin: str) -> Axis:
    match = RANGE.match(text)
    assert match is not None, "called on a range"
    scale, low_text, high_text = match.groups()
    try:
        low, high = (int(low_text), int(high_text)) if scale == "int" else (float(low_text), float(high_text))
    except ValueError:
        raise bad_input(f"{origin}: {scale}(LOW,HIGH) takes two {'whole ' if scale == 'int' else ''}numbers, "
                        f"not {_shown(text)}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise bad_input(f"{origin}: a range needs LOW < HIGH, got {_shown(text)}")
    if scale == "log" and low <= 0:
        raise bad_input(f"{origin}: log(LOW,HIGH) needs LOW > 0, got {_shown(text)}")
    return Axis(field, scale=scale, low=low, high=high, origin=origin)


def check_axes(axes: list[Axis], base: dict, source: str) -> None:
    """Every axis names a field of the spec, once, and each of its values (a range's both ends)
    makes a spec that validates: exit 2 naming the axis otherwise, before anything runs."""
    if not axes:
        raise bad_input(f"{source}: a sweep needs at least one axis: --grid FIELD=V1,V2 or sweep.axes in the spec")
    seen: set[str] = set()
    for axis in axes:
        if axis.field in seen:
            raise bad_input(f"{axis.origin}: {axis.field} is swept twice; give it once")
        seen.add(axis.field)
        _check_field(axis)
        for value in (axis.low, axis.high) if axis.is_range else axis.values:
            spec_with(base, {axis.field: value}, source, {axis.field: axis.origin})


def _check_field(axis: Axis) -> None:
    """The field exists in JobSpec (a key under a free-form mapping such as model.args counts)."""
    parts = axis.field.split(".")
    if parts[0] in NOT_AXES:
        raise bad_input(f"{axis.origin}: {parts[0]} cannot be swept")
    model: type[BaseModel] = JobSpec
    for depth, part in enumerate(parts):
        fields = model.model_fields
        here = ".".join(parts[: depth + 1])
        if part not in fields:
            raise bad_input(f"{axis.origin}: the spec has no field {here}{_did_you_mean(part, list(fields))}")
        annotation = fields[part].annotation
        section = _section_in(annotation)
        last = depth == len(parts) - 1
        if last and section is not None:
            raise bad_input(f"{axis.origin}: {here} is a section; sweep one of its fields, e.g. "
                            f"{here}.{next(iter(section.model_fields))}")
        if last:
            return
        if section is None:
            if typing.get_origin(annotation) is dict:
                return  # model.args.width: the keys of a free-form mapping are the user's
            raise bad_input(f"{axis.origin}: {here} is a value, not a section with fields")
        model = section


def _section_in(annotation) -> type[BaseModel] | None:
    for kind in (annotation, *typing.get_args(annotation)):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def spec_with(base: dict, params: dict[str, Any], source: str, origins: dict[str, str] | None = None,
              name: str | None = None) -> JobSpec:
    """The base spec (raw, as written) with each field path set to its value, validated; a value
    the spec refuses is blamed on its axis."""
    raw = copy.deepcopy(base)
    for field, value in params.items():
        node = raw
        parts = field.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = child if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    if name is not None:
        raw["name"] = name
    blame = {tuple(field.split(".")): origin for field, origin in (origins or {}).items()}
    return validate_spec(raw, source=source, origins=blame)


def grid_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' lists, in the order written (the last axis varies fastest)."""
    return [dict(zip((a.field for a in axes), combo)) for combo in itertools.product(*(a.values for a in axes))]
