"""Reading a JSONL dataset file into validated test cases.

One JSON object a line: {"id", "input", "expected", "metadata", "assertions"}.
Every problem is reported as FILE:LINE: what is wrong, and nothing is written
until the whole file is valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from scheduler.errors import DatasetFormatError

FIELDS = ("id", "input", "expected", "metadata", "assertions", "tools")
# Portia Steel Thread test cases are accepted as they are (see _from_steel_thread).
STEEL_THREAD_FIELDS = ("dataset", "testcase", "test_case_name", "run", "input_config",
                       "assertions", "id")
MAX_ID_CHARS = 200  # the width of DatasetItem.key


@dataclass(frozen=True)
class ParsedDataset:
    """A dataset file's test cases, ready to be stored."""

    name: str
    version: str  # content hash: the same cases give the same version
    source: str
    items: list[dict[str, Any]]  # DatasetItem fields: key, position, input, expected, ...


def _parse_line(raw: bytes, path: str, lineno: int) -> dict[str, Any] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(
            path, lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start + 1}); save the file as UTF-8"
        ) from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            path, lineno, f"invalid JSON: {exc.msg} at column {exc.colno} "
            "(each line must be one complete JSON object)"
        ) from None
    except UnicodeEncodeError:
        raise DatasetFormatError(
            path, lineno, "a string holds an unpaired surrogate escape (\\udXXX); "
            "write the character itself or a valid pair"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise DatasetFormatError(
            path, lineno, f"JSON value out of range: {str(exc)[:120]} (very large numbers "
            "and very deep nesting are refused)"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(
            path, lineno, f"a line must be a JSON object, got {type(obj).__name__}"
        )
    return obj


def _from_steel_thread(obj: dict[str, Any], path: str, lineno: int) -> dict[str, Any]:
    """A Steel Thread test case ({"testcase", "input_config": {"value", ...}, "assertions"})
    in our shape: input = the query, the rest kept as metadata."""
    unknown = sorted(set(obj) - set(STEEL_THREAD_FIELDS))
    if unknown:
        raise DatasetFormatError(
            path, lineno, f"unknown field \"{unknown[0]}\" in a Steel Thread test case "
            f"(allowed: {', '.join(STEEL_THREAD_FIELDS)})"
        )
    config = obj["input_config"]
    if not isinstance(config, dict) or not isinstance(config.get("value"), str):
        raise DatasetFormatError(
            path, lineno, "\"input_config\" must be an object with a string \"value\" "
            "(the query)"
        )
    meta = {k: obj[k] for k in ("dataset", "test_case_name", "run") if obj.get(k) is not None}
    meta.update({f"input_{k}" if k == "type" else k: v for k, v in config.items()
                 if k != "value" and v is not None})
    return {
        "id": obj.get("testcase") or obj.get("test_case_name") or obj.get("id") or lineno,
        "input": config["value"],
        "metadata": meta,
        "assertions": obj.get("assertions"),
    }


def _validate(obj: dict[str, Any], path: str, lineno: int) -> dict[str, Any]:
    if "input_config" in obj:
        obj = _from_steel_thread(obj, path, lineno)
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise DatasetFormatError(
            path, lineno, f"unknown field \"{unknown[0]}\" (allowed: {', '.join(FIELDS)})"
        )
    if obj.get("input") is None:
        raise DatasetFormatError(
            path, lineno, "\"input\" is missing — every line needs an input "
            "(a string, an object of template variables, or a list of chat messages)"
        )
    key = obj.get("id", lineno)
    if not isinstance(key, str | int) or isinstance(key, bool) or str(key) == "":
        raise DatasetFormatError(path, lineno, "\"id\" must be a non-empty string or an integer")
    if len(str(key)) > MAX_ID_CHARS:
        raise DatasetFormatError(
            path, lineno, f"\"id\" is longer than {MAX_ID_CHARS} characters; use a shorter id"
        )
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise DatasetFormatError(path, lineno, "\"metadata\" must be an object")
    assertions = obj.get("assertions")
    if assertions is not None:
        if not isinstance(assertions, list):
            raise DatasetFormatError(path, lineno, "\"assertions\" must be a list of objects")
        for i, a in enumerate(assertions):
            if not isinstance(a, dict) or not isinstance(a.get("type"), str):
                raise DatasetFormatError(
                    path, lineno, f"assertions[{i}] must be an object with a \"type\" field"
                )
    tools = obj.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise DatasetFormatError(
            path, lineno, "\"tools\" must be a list of tool schemas (OpenAI format: "
            "{\"type\": \"function\", \"function\": {\"name\", \"parameters\"}})"
        )
    return {
        "key": str(key),
        "position": lineno,
        "input": obj["input"],
        "expected": obj.get("expected"),
        "meta": metadata,
        "assertions": assertions,
        "tools": tools,
    }


def _read_lines(stream: IO[bytes], path: str, max_line_bytes: int) -> list[tuple[int, bytes]]:
    lines: list[tuple[int, bytes]] = []
    lineno = 0
    while True:
        raw = stream.readline(max_line_bytes + 2)  # room for a CRLF after a full line
        if not raw:
            return lines
        lineno += 1
        content = raw.rstrip(b"\r\n")
        if lineno == 1 and content.startswith(b"\xef\xbb\xbf"):
            content = content[3:]  # a UTF-8 byte order mark
        if len(content) > max_line_bytes:
            raise DatasetFormatError(
                path, lineno, f"line longer than {max_line_bytes} bytes "
                "(raise EVALQ_MAX_LINE_BYTES if this is intended)"
            )
        lines.append((lineno, content))


def version_of(items: list[dict[str, Any]]) -> str:
    """Content hash of the test cases: what makes two files the same dataset version."""
    canon = json.dumps(
        [[i["key"], i["input"], i["expected"], i["meta"], i["assertions"], i["tools"]]
         for i in items],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_dataset_file(path: str | Path, *, max_line_bytes: int, name: str | None = None
                      ) -> ParsedDataset:
    """Parse and validate a JSONL dataset; raises DatasetFormatError on the first problem."""
    p = Path(path)
    shown = str(path)
    try:
        with p.open("rb") as stream:
            lines = _read_lines(stream, shown, max_line_bytes)
    except OSError as exc:
        raise DatasetFormatError(shown, None, f"cannot read the file: {exc.strerror}") from None
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, raw in lines:
        obj = _parse_line(raw, shown, lineno)
        if obj is None:
            continue
        item = _validate(obj, shown, lineno)
        if item["key"] in seen:
            raise DatasetFormatError(
                shown, lineno, f"duplicate id {item['key']!r} (first on line {seen[item['key']]})"
            )
        seen[item["key"]] = lineno
        items.append(item)
    if not items:
        raise DatasetFormatError(shown, None, "no test cases (the file is empty)")
    return ParsedDataset(name or p.stem, version_of(items), shown, items)
