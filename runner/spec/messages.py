"""Saying what is wrong in a spec, and what to write instead: the field's path, the file
line or the --set option it came from, "did you mean", and the spelling a value needs."""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from runner.spec.model import JobSpec, Section
from runner.spec.reading import _did_you_mean, _kind, _shown


def describe(err: ValidationError, source: str, lines: dict, origins: dict) -> str:
    # a "missing" field is often one misspelled: the unknown field's "did you mean" says more
    first = sorted(err.errors(), key=lambda e: e["type"] == "missing")[0]
    loc = tuple(str(p) for p in first["loc"])
    field = ".".join(_shown(p, 40) for p in loc) or "spec"
    origin = _origin(loc, origins, lines)
    where = origin or source
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    if origin is None and line:
        where = f"{source}:{line}"
    more = len(err.errors()) - 1
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {field}: {_shown(_explain(first, loc, origin), 400)}{tail}"


def _origin(loc: tuple, origins: dict, lines: dict) -> str | None:
    """The option that set the field in error: the one that set it or a section above it, or,
    for a field the file does not have, the one that made it on the way to a field below it
    (`--set trian.epochs=2` makes `trian`)."""
    above = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
    if above is not None or not loc or loc in lines:
        return above
    return next((origin for key, origin in origins.items() if key[:len(loc)] == loc), None)


def _explain(error: ErrorDetails, loc: tuple, origin: str | None) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return _unknown_field(loc)
    if kind == "missing":
        return "required field is missing"
    if kind == "model_type":
        return _not_a_section(loc, value, origin)
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return "use only letters, digits, '.', '_' and '-' (it becomes part of the run folder's name)"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type"):
        message += f", not {_kind(value)}"
    if kind == "literal_error" and isinstance(value, str):
        message += _did_you_mean(value, re.findall(r"'([^']*)'", error["ctx"]["expected"]))
    return message


def _unknown_field(loc: tuple) -> str:
    """`slurm.partiton` -> did you mean `slurm.partition`?; `train.gpu` -> it belongs in resources."""
    parent, name = loc[:-1], loc[-1]
    section = _section_at(parent)
    siblings = list(section.model_fields) if section else []
    close = difflib.get_close_matches(name.lower(), siblings, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean `{'.'.join((*parent, close[0]))}`?"
    elsewhere = [".".join(path) for path in _field_paths(JobSpec) if path[-1] == name.lower()]
    if elsewhere:
        return f"unknown field; did you mean `{elsewhere[0]}`?"
    return f"unknown field; {'.'.join(parent) or 'a spec'} has: {', '.join(siblings)}"


def _not_a_section(loc: tuple, value: Any, origin: str | None) -> str:
    """`model: cnn` -> write `model: {name: cnn}`: a value where a section of fields belongs."""
    section, name = _section_at(loc), ".".join(loc)
    fields = ", ".join(section.model_fields) if section else ""
    if value is None:
        return f"an empty section; give it fields ({fields}) or leave it out"
    if section and "name" in section.model_fields and isinstance(value, str):
        write = f"--set {name}.name={value}" if origin else f"{loc[-1]}: {{name: {value}}}"
        return f"a section, not a value; write `{_shown(write)}`"
    return f"a section of fields ({fields}), not `{_shown(_as_yaml(value))}`"


def _section_at(loc: tuple) -> type[Section] | None:
    section: type[Section] = JobSpec
    for part in loc:
        field = section.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, Section)):
            return None
        section = field.annotation
    return section


def _field_paths(section: type[Section], prefix: tuple = ()) -> list[tuple]:
    paths = []
    for name, field in section.model_fields.items():
        paths.append(prefix + (name,))
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            paths += _field_paths(field.annotation, prefix + (name,))
    return paths


def _as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


