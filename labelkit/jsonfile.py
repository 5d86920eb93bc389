"""Read the JSON and JSON Lines files users hand us, with one clear message per problem.

Exports from Windows tools often start with a UTF-8 byte-order mark, which `json.loads` refuses
("Unexpected UTF-8 BOM"); an empty file would read as "Expecting value: line 1 column 1"; and a file
whose top level is a list (a bare list of annotations, say) is a different format, whose message must
say what the expected object holds. Each reader takes the error class of its caller, so that a
command's own error type (and exit status) is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def json_type(value) -> str:
    """The JSON name of a parsed value's type."""
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def _read_error(path: Path, e: OSError, error: type[Exception]) -> Exception:
    if isinstance(e, FileNotFoundError):
        return error(f"{path}: file not found")
    return error(f"{path}: cannot read file: {e.strerror or e}")


def read_json_object(path: str | Path, error: type[Exception], holds: str) -> dict:
    """Parse a JSON file whose top level must be an object holding `holds` (words for the message)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _read_error(path, e, error) from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is dropped, as a text editor would
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    if not text.strip():
        raise error(f"{path}: file is empty; it must hold a JSON object with {holds}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: top level is a JSON {json_type(data)}; it must be an object with {holds}")
    return data


def read_jsonl_objects(path: str | Path, error: type[Exception], holds: str) -> Iterator[tuple[str, dict]]:
    """(location, record) per non-blank line of a JSON Lines file; each line must be an object with `holds`.

    The file is streamed (a line at a time); a byte-order mark before the first line is dropped.
    """
    path = Path(path)
    records = 0
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise error(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
                if not isinstance(record, dict):
                    raise error(f"{where}: is a JSON {json_type(record)}; each line must be an object with {holds}")
                records += 1
                yield where, record
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise _read_error(path, e, error) from None
    if not records:
        raise error(f"{path}: file is empty; each line must be a JSON object with {holds}")
