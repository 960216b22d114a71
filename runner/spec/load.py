"""Reading a spec: YAML from a file, `--set KEY=VALUE` overrides and CLI options applied, then
validated, with one line naming the field path and, where known, the file line or the option
it came from."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from runner.errors import bad_input
from runner.gpus import bf16_refusal
from runner.spec.model import JobSpec
from runner.spec.reading import MAX_DEPTH, SpecRefused, _kind, _shown, parse_yaml, read_spec_file


def load_spec(path: str | Path, overrides: Sequence[str] = (), **fields: Any) -> JobSpec:
    """Read, override and validate a spec file. `fields` are dotted-path overrides
    coming from CLI options (e.g. `backend="modal"`), applied after `--set`."""
    path = Path(path)
    raw, lines = read_spec_file(path)
    if raw is None:
        raise bad_input(f"{path}: empty; a spec needs at least a name, e.g. `name: my-job`")
    if not isinstance(raw, dict):
        raise bad_input(f"{path}: a spec is a mapping of sections (name: ..., model: ...), not {_kind(raw)}")
    origins: dict[tuple, str] = {}  # key path -> the option that set it: its errors are blamed on the option
    for item in overrides:
        key, value = _parse_override(item)
        origins[tuple(key.split("."))] = f"--set {_shown(item)}"
        _set_path(raw, key, value, origins[tuple(key.split("."))])
    for key, value in fields.items():
        if value is not None:
            origins[tuple(key.split("."))] = f"--{key.split('.')[-1]} {_shown(value)}"
            _set_path(raw, key, value, origins[tuple(key.split("."))])
    return validate_spec(raw, source=str(path), lines=lines, origins=origins)


def validate_spec(raw: dict, source: str = "spec", lines: dict | None = None, origins: dict | None = None) -> JobSpec:
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as err:
        from runner.spec.messages import describe

        raise bad_input(describe(err, source, lines or {}, origins or {})) from None
    _check_batch_split(spec, source, lines or {}, origins or {})
    _check_precision_on_the_card(spec, source, lines or {}, origins or {})
    return spec


def _check_batch_split(spec: JobSpec, source: str, lines: dict, origins: dict) -> None:
    """The global batch splits over the workers the spec asks for (a run would stop at start-up
    with this very message; the spec alone shows it)."""
    workers = spec.resources.nodes * spec.resources.workers_per_node
    if spec.data.batch_size % workers == 0:
        return
    asked = (f"{spec.resources.nodes} node(s) x " if spec.resources.nodes > 1 else "") + (
        f"resources.gpu {spec.resources.gpu}" if spec.resources.gpu_request else
        f"resources.processes {spec.resources.processes}")
    key = ("data", "batch_size")
    where = origins.get(key) or (f"{source}:{lines[key]}" if key in lines else source)
    raise bad_input(f"{where}: data.batch_size: {spec.data.batch_size} does not split evenly over {workers} workers "
                    f"({asked}); make it a multiple of {workers}")


def _check_precision_on_the_card(spec: JobSpec, source: str, lines: dict, origins: dict) -> None:
    """bf16 on a card that has none (a T4, a V100) is refused before anything is rented or queued:
    every backend, the dry run and `submit` read the spec through here."""
    request = spec.resources.gpu_request
    if spec.train.precision != "bf16" or request is None:
        return
    refusal = bf16_refusal(f"resources.gpu {request.type.name}", request.type.compute_capability)
    if refusal:
        key = ("train", "precision")
        where = origins.get(key) or (f"{source}:{lines[key]}" if key in lines else source)
        raise bad_input(f"{where}: train.precision: bf16, but {refusal}")


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$", key.strip()) or key.count(".") > MAX_DEPTH:
        raise bad_input(f"--set {_shown(item)}: expected KEY=VALUE with a dotted key, e.g. train.epochs=1")
    try:
        parsed = parse_yaml(value)[0] if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # not YAML: take the text as it is, validation decides
    except SpecRefused as err:
        raise bad_input(f"--set {_shown(item)}: {err.message}") from None
    return key.strip(), parsed


def _set_path(raw: dict, key: str, value: Any, origin: str) -> None:
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise bad_input(f"{origin}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def json_schema() -> dict:
    return JobSpec.model_json_schema()
