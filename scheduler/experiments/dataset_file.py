"""Reading a JSONL dataset file into validated test cases.

One JSON object a line: {"id", "input", "expected", "metadata", "assertions"}.
Every problem is reported as FILE:LINE: what is wrong, and nothing is written
until the whole file is valid. What the database cannot store (a NUL character,
a lone surrogate, NaN, nesting deeper than MAX_JSON_DEPTH) is refused here, with
the field named; `unstorable` is shared with the ingestion of production runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, overload

from scheduler.errors import DatasetFormatError
from workers.scorers.steel_thread import STEEL_THREAD_TYPES

FIELDS = ("id", "input", "expected", "metadata", "assertions", "tools")
# Portia Steel Thread test cases are accepted as they are (see _from_steel_thread).
STEEL_THREAD_FIELDS = ("dataset", "testcase", "test_case_name", "run", "input_config",
                       "assertions", "id")
MAX_ID_CHARS = 200  # the width of DatasetItem.key
MAX_NAME_CHARS = 191  # Dataset.name is 200 wide, and an experiment's default name is NAME@VERSION
MAX_SOURCE_CHARS = 1000  # the width of Dataset.source (the file's path)
MAX_JSON_DEPTH = 64  # arrays and objects nested in one field's value (README: Dataset format)
_MAX_INT_BITS = 13_000  # about 3900 digits; json.dumps refuses integers past 4300 digits
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class ParsedDataset:
    """A dataset's test cases, ready to be stored.

    `items` (DatasetItem fields: key, position, input, expected, ...) is a list for a
    stored dataset, and a FileItems for a file: read again from the file each time it is
    iterated, so that no step holds every case of a large file."""

    name: str
    version: str  # content hash: the same cases give the same version
    source: str
    items: Sequence[dict[str, Any]]


def text_problem(text: str) -> str | None:
    """What makes a string impossible to store (a NUL character, a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which the database cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains a lone surrogate (\\u{ord(text[exc.start]):04x}), which is not valid "
                "Unicode and the database cannot store; send the character itself or a valid "
                "surrogate pair")
    return None


def shown_key(key: Any) -> str:
    """An object key as a step of a path: `.name`, or `["any text"]` escaped to printable
    ASCII and cut at 40 characters (a key may hold NULs, surrogates or terminal escapes)."""
    text = key if isinstance(key, str) else json.dumps(key)
    if _PLAIN_KEY.match(text):
        return f".{text}"
    quoted = json.dumps(text)  # ensure_ascii: every non-printable character is escaped
    if len(quoted) > 40:
        quoted = quoted[:36].rstrip("\\") + '..."'
    return f"[{quoted}]"


def _path(trail: tuple[Any, ...] | None) -> str:
    steps: list[str] = []
    while trail is not None:
        trail, key, is_index = trail
        steps.append(f"[{key}]" if is_index else shown_key(key))
    steps.reverse()
    if len(steps) > 8:  # deep nesting: the start and the end of the path are enough
        steps[4:-2] = ["(...)"]
    return "".join(steps)


def _node_problem(node: Any, depth: int, max_depth: int) -> str | None:
    if isinstance(node, str):
        return text_problem(node)
    if node is None or isinstance(node, bool):
        return None
    if isinstance(node, int):
        return (f"an integer of more than {_MAX_INT_BITS * 3 // 10} digits"
                if node.bit_length() > _MAX_INT_BITS else None)
    if isinstance(node, float):
        return None if math.isfinite(node) else (
            "NaN or infinity, which is not valid JSON (a number past 1.8e308 reads as "
            "infinity); send null or a string")
    if isinstance(node, dict | list | tuple):
        if depth > max_depth:
            return (f"nested deeper than {max_depth} levels of arrays and objects; flatten it "
                    "or send the deep part as a string")
        for key in node if isinstance(node, dict) else ():
            if isinstance(key, str):
                problem = text_problem(key)
                if problem:
                    return f"an object key {problem}"
            elif not (key is None or isinstance(key, int | float)):
                return f"an object key is a {type(key).__name__}, not a string"
        return None
    return f"a {type(node).__name__} is not a JSON value"


def unstorable(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """The first part of a JSON value that the database cannot store, as (path, problem):
    path like `[2].text` ("" for the value itself). None when all of it can be stored."""
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(value, 1, None)]
    while stack:
        node, depth, trail = stack.pop()
        problem = _node_problem(node, depth, max_depth)
        if problem is not None:
            return _path(trail), problem
        if isinstance(node, dict):
            stack.extend((child, depth + 1, (trail, key, False))
                         for key, child in reversed(node.items()))
        elif isinstance(node, list | tuple):
            stack.extend((node[i], depth + 1, (trail, i, True))
                         for i in range(len(node) - 1, -1, -1))
    return None


def unstorable_field(fields: Iterable[tuple[Any, Any]]) -> tuple[str, str] | None:
    """The first (field name, value) that cannot be stored, as (`field.path`, problem);
    each field's value may nest MAX_JSON_DEPTH levels. None when every field can be stored."""
    for name, value in fields:
        problem = text_problem(name) if isinstance(name, str) else "is not a string"
        if problem:
            return "", f"a field name {problem}"
        found = unstorable(value)
        if found is not None:
            field = name if _PLAIN_KEY.match(name) else shown_key(name)
            return field + found[0], found[1]
    return None


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
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            path, lineno, f"invalid JSON: {exc.msg} at column {exc.colno} "
            "(each line must be one complete JSON object)"
        ) from None
    except RecursionError:
        raise DatasetFormatError(
            path, lineno, f"nested far deeper than {MAX_JSON_DEPTH} levels of arrays and "
            "objects, the most a field may hold"
        ) from None
    except ValueError as exc:
        raise DatasetFormatError(
            path, lineno, f"JSON value out of range: {str(exc)[:120]} (very large numbers "
            "are refused)"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(
            path, lineno, f"a line must be a JSON object, got {type(obj).__name__}"
        )
    found = unstorable_field(obj.items())
    if found is not None:
        field, problem = found
        raise DatasetFormatError(path, lineno, f"{field}: {problem}" if field else problem)
    return obj


def _from_steel_thread(obj: dict[str, Any], path: str, lineno: int) -> dict[str, Any]:
    """A Steel Thread test case ({"testcase", "input_config": {"value", ...}, "assertions"})
    in our shape: input = the query, the rest kept as metadata, and its assertions scored
    as Steel Thread scores them."""
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
        "assertions": _steel_thread_assertions(obj.get("assertions")),
    }


def _steel_thread_assertions(assertions: Any) -> Any:
    """A Steel Thread case's assertions, the types Steel Thread scores its own way (tool
    calls, latency) renamed to the scorers that do (STEEL_THREAD_TYPES); anything else,
    and what is not a list of objects (refused by _validate), as it is."""
    if not isinstance(assertions, list):
        return assertions
    return [{**a, "type": STEEL_THREAD_TYPES[a["type"]]}
            if isinstance(a, dict) and isinstance(a.get("type"), str)
            and a["type"] in STEEL_THREAD_TYPES else a
            for a in assertions]


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


def _read_lines(stream: IO[bytes], path: str, max_line_bytes: int
                ) -> Iterator[tuple[int, bytes]]:
    lineno = 0
    while True:
        raw = stream.readline(max_line_bytes + 2)  # room for a CRLF after a full line
        if not raw:
            return
        lineno += 1
        content = raw.rstrip(b"\r\n")
        if lineno == 1 and content.startswith(b"\xef\xbb\xbf"):
            content = content[3:]  # a UTF-8 byte order mark
        if len(content) > max_line_bytes:
            raise DatasetFormatError(
                path, lineno, f"line longer than {max_line_bytes} bytes "
                "(raise EVALQ_MAX_LINE_BYTES if this is intended)"
            )
        yield lineno, content


def _canonical(item: dict[str, Any]) -> str:
    return json.dumps(
        [item["key"], item["input"], item["expected"], item["meta"], item["assertions"],
         item["tools"]], sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class _VersionHash:
    """version_of, one item at a time: the hash of the JSON array of the items' canonical
    forms, fed to sha256 piece by piece (the same bytes, so the same version)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256(b"[")
        self._first = True

    def add(self, item: dict[str, Any]) -> None:
        if not self._first:
            self._sha.update(b",")
        self._first = False
        self._sha.update(_canonical(item).encode())

    def hexdigest(self) -> str:
        sha = self._sha.copy()
        sha.update(b"]")
        return sha.hexdigest()[:16]


def version_of(items: Iterable[dict[str, Any]]) -> str:
    """Content hash of the test cases: what makes two files the same dataset version."""
    version = _VersionHash()
    for item in items:
        version.add(item)
    return version.hexdigest()


def _file_items(path: Path, shown: str, max_line_bytes: int, *, check_keys: bool
                ) -> Iterator[dict[str, Any]]:
    """The file's validated test cases, read one line at a time; DatasetFormatError on
    the first problem (with check_keys, a duplicate id too)."""
    seen: dict[str, int] = {}
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise DatasetFormatError(shown, None, f"cannot read the file: {exc.strerror}") from None
    with stream:
        try:
            for lineno, raw in _read_lines(stream, shown, max_line_bytes):
                obj = _parse_line(raw, shown, lineno)
                if obj is None:
                    continue
                item = _validate(obj, shown, lineno)
                if check_keys:
                    if item["key"] in seen:
                        raise DatasetFormatError(
                            shown, lineno, f"duplicate id {item['key']!r} (first on line "
                            f"{seen[item['key']]})")
                    seen[item["key"]] = lineno
                yield item
        except OSError as exc:
            raise DatasetFormatError(shown, None,
                                     f"cannot read the file: {exc.strerror}") from None


class FileItems(Sequence[dict[str, Any]]):
    """The test cases of a validated dataset file, read from the file again each time
    they are iterated (one line at a time: nothing holds them all). Iterating checks that
    the file still hashes to `version`, and raises DatasetFormatError at its end if the
    file changed since it was validated. Indexing reads the file up to the index."""

    def __init__(self, path: Path, shown: str, max_line_bytes: int, version: str,
                 count: int) -> None:
        self._path, self._shown, self._max = path, shown, max_line_bytes
        self._version, self._count = version, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        version = _VersionHash()
        for item in _file_items(self._path, self._shown, self._max, check_keys=False):
            version.add(item)
            yield item
        if version.hexdigest() != self._version:
            raise DatasetFormatError(self._shown, None, "the file changed while evalq was "
                                     "reading it; run again once it is written")

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return list(self)[index]
        position = index + self._count if index < 0 else index
        if not 0 <= position < self._count:
            raise IndexError(f"item {index} of {self._count}")
        for i, item in enumerate(_file_items(self._path, self._shown, self._max,
                                             check_keys=False)):
            if i == position:
                return item
        raise IndexError(f"item {index}: the file changed")


def _check_names(shown: str, name: str) -> None:
    """The dataset's name and path are stored too: refuse what the database cannot hold."""
    printable = json.dumps(shown)[1:-1]  # a path from the OS may hold undecodable bytes
    for what, text, most in (("the dataset name", name, MAX_NAME_CHARS),
                             ("the file's path", shown, MAX_SOURCE_CHARS)):
        problem = text_problem(text)
        if problem is None and len(text) > most:
            problem = f"is longer than {most} characters"
        if problem is not None:
            raise DatasetFormatError(printable, None, f"{what} {problem}; rename the file "
                                     "(or move it to a shorter path)")


def load_dataset_file(path: str | Path, *, max_line_bytes: int, name: str | None = None
                      ) -> ParsedDataset:
    """Parse and validate a JSONL dataset; raises DatasetFormatError on the first problem.

    The file is read one line at a time and its cases are not kept: `items` reads them
    again when iterated (see FileItems), so a file of any size takes little memory."""
    p = Path(path)
    shown = str(path)
    _check_names(shown, name or p.stem)
    version = _VersionHash()
    count = 0
    for item in _file_items(p, shown, max_line_bytes, check_keys=True):
        version.add(item)
        count += 1
    if not count:
        raise DatasetFormatError(shown, None, "no test cases (the file is empty)")
    digest = version.hexdigest()
    return ParsedDataset(name or p.stem, digest, shown,
                         FileItems(p, shown, max_line_bytes, digest, count))
