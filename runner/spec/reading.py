"""Reading a spec file's YAML within bounds: a spec is a few hundred bytes of UTF-8, so a
binary, huge, deeply nested, alias-exploding, tagged or duplicate-keyed file is refused with one
line naming the file and line, before it costs anything, instead of a traceback or a silent
last-key-wins."""

from __future__ import annotations

import codecs
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from runner.errors import bad_input


def _shown(value: Any, limit: int = 60) -> str:
    """A value fit for a one-line message: control characters escaped, long text cut."""
    text = str(value)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "a mapping"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


# ---- YAML, within bounds ---------------------------------------------------------------
# A spec is a few hundred bytes. These bounds are far above any real spec and far below what
# costs noticeable time or memory, so a broken or hostile file is refused before it costs anything.

MAX_SPEC_BYTES = 256 * 1024
MAX_VALUES = 10_000  # keys and values, counted again for every alias that repeats them
MAX_ALIASES = 100
MAX_DEPTH = 20  # a spec itself is 4 deep (data.synthetic.shape[0]); args may nest a little
MAX_SCALAR_CHARS = 10_000
INT64 = 2**63
SURROGATE = re.compile("[\ud800-\udfff]")
STR_TAG, MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"


class SpecRefused(Exception):
    """A YAML document the reader will not take, with its 1-based line (0: no one line)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def read_spec_file(path: Path) -> tuple[Any, dict[tuple, int]]:
    """The file's YAML value and each key path's line; one-line bad_input for anything else."""
    text = _spec_text(path)
    try:
        return parse_yaml(text)
    except SpecRefused as err:
        raise bad_input(f"{path}{f':{err.line}' if err.line else ''}: {err.message}") from None
    except yaml.YAMLError as err:
        line = _error_line(err, text)
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or err
        raise bad_input(f"{path}{f':{line}' if line else ''}: not valid YAML ({_shown(problem, 200)})") from None


def _spec_text(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)  # never more: /dev/zero is a file too
    except OSError as err:
        raise bad_input(f"cannot read spec {path}: {err.strerror or err}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise bad_input(f"{path}: more than {MAX_SPEC_BYTES // 1024} KiB; a spec is a small YAML text file")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)):  # UTF-32-LE's starts alike
        raise bad_input(f"{path}: UTF-16 or UTF-32 text; save the spec as UTF-8")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise bad_input(f"{path}:{line}: a binary file (it holds NUL bytes), not a YAML spec")
    data = data.removeprefix(codecs.BOM_UTF8)  # some Windows editors start UTF-8 with one
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        byte = data[err.start]
        raise bad_input(f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x}); save the spec as UTF-8") from None


def parse_yaml(text: str) -> tuple[Any, dict[tuple, int]]:
    """One YAML document's value and each key path's line. SpecRefused past the bounds above,
    for a YAML tag or for a key given twice; yaml.YAMLError where it is not YAML."""
    _check_events(text)  # first, cheaply: composing is recursive and expanding aliases is not bounded
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines = _key_lines(node)
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _check_events(text: str) -> None:
    """Depth, size, aliases, tags and scalar length, from the parser's flat event stream."""
    depth = values = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.events.CollectionEndEvent):
            depth -= 1
        if not isinstance(event, yaml.events.NodeEvent):
            continue
        values += 1
        if values > MAX_VALUES:
            raise SpecRefused(line, f"more than {MAX_VALUES} values; a spec is small")
        if isinstance(event, yaml.events.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise SpecRefused(line, f"more than {MAX_ALIASES} aliases (*name); a spec needs a few at most")
            continue
        if event.tag is not None:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")
            raise SpecRefused(line, f"YAML tags ({_shown(tag, 40)}) are not allowed in a spec; write plain values")
        if isinstance(event, yaml.events.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecRefused(line, f"nested more than {MAX_DEPTH} levels deep; a spec is 4 deep")
        elif len(event.value) > MAX_SCALAR_CHARS:
            raise SpecRefused(line, f"a value of {len(event.value)} characters; a spec's values are at most "
                              f"{MAX_SCALAR_CHARS}")
        elif SURROGATE.search(event.value):
            raise SpecRefused(line, "a \\u escape that is no character (a lone UTF-16 surrogate)")


def _key_lines(node, path: tuple = (), lines: dict | None = None, above: tuple = ()) -> dict[tuple, int]:
    """Map each key path to its 1-based line, walking the document as it will be built (aliases
    expanded), so the expanded size and depth are bounded too; a key given twice is refused."""
    lines = {} if lines is None else lines
    line = node.start_mark.line + 1
    if any(node is outer for outer in above):
        raise SpecRefused(line, "an alias refers to the collection that holds it (a loop)")
    if len(path) > MAX_DEPTH:
        raise SpecRefused(line, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded")
    for key, child, child_line in _children(node, path):
        lines[path + (key,)] = child_line
        if len(lines) > MAX_VALUES:
            raise SpecRefused(child_line, f"more than {MAX_VALUES} values once aliases are expanded; a spec is small")
        _key_lines(child, path + (key,), lines, above + (node,))
    return lines


def _children(node, path: tuple) -> list[tuple[str, Any, int]]:
    if isinstance(node, yaml.SequenceNode):
        return [(str(index), child, child.start_mark.line + 1) for index, child in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):
        return []
    children: list[tuple[str, Any, int]] = []
    seen: dict[str, int] = {}
    for key, child in node.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode):
            raise SpecRefused(line, "a key must be a name, not a list or a mapping")
        if key.tag not in (STR_TAG, MERGE_TAG):  # `on:`, `1:` or `~:` would be a bool, a number or null
            raise SpecRefused(line, f"a key must be a name, and `{_shown(key.value, 40)}` reads as "
                              f"{key.tag.rpartition(':')[2]}; quote it")
        if key.value in seen:  # YAML keys are unique; PyYAML would keep the last one silently
            name = ".".join((*path, _shown(key.value, 40)))
            where = f"lines {seen[key.value]} and {line}" if seen[key.value] != line else f"on line {line}"
            raise SpecRefused(line, f"{name} is given twice ({where}); YAML keys are unique, keep one")
        seen[key.value] = line
        children.append((key.value, child, line))
    return children


def _error_line(err: yaml.YAMLError, text: str) -> int | None:
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(err, "position", None)  # a ReaderError: a character YAML does not allow
    return text[:position].count("\n") + 1 if position is not None else None


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader, less YAML 1.1's surprises: base-60 numbers and dates stay the text written (a
    spec has neither, and `gpu: 4090:2` is not 245402), and integers fit in 64 bits."""

    def construct_yaml_int(self, node):
        if ":" in node.value:
            return node.value
        try:
            value = super().construct_yaml_int(node)
        except ValueError:  # past Python's 4300-digit limit
            value = INT64
        if not -INT64 <= value < INT64:
            raise SpecRefused(node.start_mark.line + 1, f"{_shown(node.value, 30)} is too large; numbers in a spec "
                              "fit in 64 bits")
        return value

    def construct_yaml_float(self, node):
        return node.value if ":" in node.value else super().construct_yaml_float(node)

    def construct_object(self, node, deep=False):
        # a safety net: a value PyYAML cannot build is the file's fault, and never a traceback
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
            raise SpecRefused(node.start_mark.line + 1, f"cannot read {_shown(node.value)} ({err})") from None


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)
_SpecLoader.add_constructor("tag:yaml.org,2002:float", _SpecLoader.construct_yaml_float)
_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _SpecLoader.construct_scalar)
