"""MkDocs hook: the spec reference on docs/spec.md, written at build time from the JSON Schema of the
Pydantic models (runner/spec/model.py, what `gpujob schema` prints), so that the page cannot drift
from the code. Every field of every section gets a row: its dotted name, type, default, bounds and
the description the model gives it. A page without the marker fails the build.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "<!-- spec-reference -->"
PAGE = "spec.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} lost its marker {MARKER}: the generated spec reference has nowhere to go")
    from runner.spec.model import JobSpec

    return markdown.replace(MARKER, reference(JobSpec.model_json_schema()))


def reference(schema: dict) -> str:
    """One table per section (the top level first, then each section in the spec's order)."""
    defs = schema.get("$defs", {})
    tables = [table("Top level", "", "", top_level_rows(schema, defs))]
    for name, prop in schema["properties"].items():
        section = section_of(prop, defs)
        if section is not None:
            tables.extend(section_tables(name, section, prop.get("description", ""), defs))
    return "\n\n".join(tables)


def section_of(prop: dict, defs: dict) -> dict | None:
    """The section a property holds (directly or as `SECTION | null`), or None for a plain value."""
    for candidate in [prop, *prop.get("anyOf", [])]:
        if "$ref" in candidate:
            return defs[candidate["$ref"].rsplit("/", 1)[-1]]
    return None


def top_level_rows(schema: dict, defs: dict) -> list[str]:
    required = set(schema.get("required", []))
    return [row(name, prop, name in required) for name, prop in schema["properties"].items()
            if section_of(prop, defs) is None]


def section_tables(path: str, section: dict, description: str, defs: dict) -> list[str]:
    rows, nested = [], []
    required = set(section.get("required", []))
    for name, prop in section["properties"].items():
        inner = section_of(prop, defs)
        if inner is None:
            rows.append(row(f"{path}.{name}", prop, name in required))
        else:
            nested.extend(section_tables(f"{path}.{name}", inner, prop.get("description", ""), defs))
    return [table(f"`{path}`", path, description or section.get("description", ""), rows), *nested]


def table(title: str, anchor: str, description: str, rows: list[str]) -> str:
    head = f"### {title}" + (f" {{#{anchor.replace('.', '-')}}}" if anchor else "")
    lead = f"\n\n{description.strip()}" if description else ""
    return (f"{head}{lead}\n\n| field | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows))


def row(path: str, prop: dict, required: bool) -> str:
    default = "required" if required else shown(prop["default"]) if "default" in prop else default_of(prop)
    meaning = " ".join(part for part in (prop.get("description", ""), bounds(prop)) if part)
    return f"| `{path}` | {type_of(prop)} | {default} | {cell(meaning)} |"


def default_of(prop: dict) -> str:
    # a default_factory (an empty list or mapping) does not appear in the JSON Schema
    return {"array": "`[]`", "object": "`{}`"}.get(prop.get("type", ""), "")


def type_of(prop: dict) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{value}`" for value in prop["enum"])
    if "anyOf" in prop:
        return " \\| ".join(type_of(option) for option in prop["anyOf"])
    if "$ref" in prop:
        return "section"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {type_of(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping of {type_of(prop['additionalProperties'])}"
    return {"null": "null", "object": "mapping"}.get(kind, kind)


def bounds(prop: dict) -> str:
    """The limits the model enforces, from the schema's keywords (and, inside `anyOf`, each option's)."""
    words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<", "le": "<=",
             "ge": ">=", "gt": ">", "lt": "<", "maxLength": "at most {} characters", "minItems": "at least {} items",
             "maxItems": "at most {} items", "pattern": "matches `{}`"}
    found: dict[str, Any] = {}
    for source in [prop, *prop.get("anyOf", [])]:
        found.update({key: source[key] for key in words if key in source})
    parts = [words[key].format(value) if "{}" in words[key] else f"{words[key]} {value}"
             for key, value in found.items()]
    return f"({', '.join(parts)})" if parts else ""


def shown(value: Any) -> str:
    return "none" if value is None else f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
