"""Reading a run's files back as gpujob wrote them, telling a damaged file (cut short, a folder in
its place, another value) from a missing one, and never letting one bad line or file break more
than what it holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from runner.errors import BAD_INPUT, GpujobError
from runner.runs.paths import SUMMARY, SUMMARY_KEYS


class DamagedFile(GpujobError):
    """A run's file that is there but cannot be read as what gpujob wrote: cut short by a crash
    or a full disk, a folder in its place, another value. Not the same as missing."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: damaged ({why})", BAD_INPUT)
        self.path, self.why = Path(path), why


def read_json(path: Path) -> dict | None:
    """A run's JSON file as the object gpujob wrote; None where it is missing; DamagedFile where
    it is there but is not one JSON object."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        raise DamagedFile(path, "a folder, not a file") from None
    except UnicodeDecodeError:
        raise DamagedFile(path, "not text") from None
    except OSError as err:
        raise DamagedFile(path, f"unreadable: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedFile(path, f"not JSON, cut short? {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(data, dict):
        raise DamagedFile(path, f"a JSON {_json_kind(data)}, not an object")
    return data


def read_summary(folder: Path) -> dict | None:
    """summary.json with the figures every finished run has; None where the run has none yet."""
    path = Path(folder) / SUMMARY
    summary = read_json(path)
    if summary is None:
        return None
    lacking = [key for key in SUMMARY_KEYS if not _is_number(summary.get(key))]
    if lacking:
        raise DamagedFile(path, f"no {', '.join(lacking)}")
    return summary


def metrics_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a line that is not a JSON object (cut short, `null`) is left out:
    the others still tell the run's story."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def last_epoch_record(path: Path, tail_bytes: int | None = None) -> dict | None:
    """metrics.jsonl's last epoch record, None where it has none; `tail_bytes`: read only the
    file's end (a listing of many runs), which must hold that line whole."""
    try:
        with Path(path).open("rb") as handle:
            if tail_bytes is not None:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == "epoch":  # `null`, a list: not a record
            return record
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "true/false"}.get(type(value), "null")


def whole_summary(folder: Path) -> dict | None:
    """summary.json when the run wrote it whole; None where it is missing or damaged (a finished
    run's final checkpoint can write it again)."""
    try:
        return read_summary(folder)
    except DamagedFile:
        return None
