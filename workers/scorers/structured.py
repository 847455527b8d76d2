"""Structured-output scorers: JSON Schema (with `format` checks), JSON inside prose or code
fences, one JSON field, and numeric answers."""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.validators import extend, validator_for
from referencing.exceptions import Unresolvable

from workers.errors import ScorerError
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.bounded_regex import (
    bounded_match,
    compile_pattern,
    quote_pattern,
    regex_budget,
)
from workers.scorers.checks import check_bool, check_number, json_equal, output_text
from workers.scorers.registry import register_scorer

MAX_LISTED_ERRORS = 3
_MISSING = object()


def _parse_json(sample: Sample, scorer: str) -> tuple[Any, str | None]:
    """(parsed output, None) or (None, why it is not JSON)."""
    try:
        return json.loads(output_text(sample, scorer)), None
    except json.JSONDecodeError as exc:
        return None, f"output is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except (ValueError, RecursionError) as exc:
        return None, f"output is not usable JSON: {str(exc)[:120]}"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- json_schema ------------------------------------------------------------------------------

_LITERAL_KEYWORDS = ("const", "enum", "default", "examples")  # data, not subschemas


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (keyword, value) of a schema and its subschemas (literal values skipped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            if key not in _LITERAL_KEYWORDS:
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _patterns(schema: dict[str, Any]) -> Iterator[str]:
    """The regular expressions of a schema: `pattern` values, `patternProperties` keys."""
    for key, value in _walk(schema):
        if key == "pattern" and isinstance(value, str):
            yield value
        elif key == "patternProperties" and isinstance(value, dict):
            yield from value


def _schema_regex(pattern: Any) -> Any:
    """A schema's pattern compiled for `bounded_match` (a bad one: could not score)."""
    try:
        return compile_pattern(pattern)
    except (TypeError, ValueError) as exc:
        raise ScorerError(f"json_schema: pattern {quote_pattern(str(pattern))} cannot be used: "
                          f"{exc}") from None


# jsonschema's own `pattern`, `patternProperties` and `additionalProperties`, with the
# schema's patterns run by `bounded_match` (the stdlib's re has no timeout).
def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not bounded_match(_schema_regex(pattern),
                                                                   instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any
                        ) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        rx = _schema_regex(pattern)
        for key, value in instance.items():
            if bounded_match(rx, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any
                           ) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = [_schema_regex(p) for p in schema.get("patternProperties", {})]
    extras = [key for key in instance if key not in properties
              and not any(bounded_match(rx, key) for rx in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(each) for each in sorted(extras, key=str))
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            regexes = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{listed} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({listed} {verb} "
                                  "unexpected)")


_BOUNDED_KEYWORDS = {"pattern": _pattern, "patternProperties": _pattern_properties,
                     "additionalProperties": _additional_properties}


# --- format ----------------------------------------------------------------------------------
# JSON Schema's `format`, checked by evalq's own stdlib checks whatever optional packages are
# installed (jsonschema checks date-time, time, uri, hostname, duration... only when
# rfc3339-validator, rfc3987, fqdn, isoduration... are; without them it passes any value):
# a verdict must not depend on the machine it ran on. A format not listed here is not checked
# (as the JSON Schema specification says of unknown formats); the verdict's metadata says so.

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|([+-])(\d{2}):(\d{2}))", re.ASCII)
_DUR_TIME = r"T(?:\d+H(?:\d+M(?:\d+S)?)?|\d+M(?:\d+S)?|\d+S)"
_DURATION = re.compile(  # RFC 3339 appendix A: dur-date [dur-time] / dur-time / dur-week
    rf"P(?:(?:\d+D|\d+M(?:\d+D)?|\d+Y(?:\d+M(?:\d+D)?)?)(?:{_DUR_TIME})?|{_DUR_TIME}|\d+W)",
    re.ASCII)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_URI_CHARS = r"A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%"
_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+.\-]*:[{_URI_CHARS}]*")
_URI_REFERENCE = re.compile(rf"[{_URI_CHARS}]*")
_IRI = re.compile(rf"[A-Za-z][A-Za-z0-9+.\-]*:[{_URI_CHARS}\u00a0-\U0010ffff]*")
_IRI_REFERENCE = re.compile(rf"[{_URI_CHARS}\u00a0-\U0010ffff]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_JSON_POINTER = re.compile(r"(?:/(?:[^~/]|~[01])*)*")
_RELATIVE_POINTER = re.compile(r"(?:0|[1-9][0-9]*)(?:#|(?:/(?:[^~/]|~[01])*)*)")
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _is_date(text: str) -> bool:
    match = _DATE.fullmatch(text)
    if not match:
        return False
    try:
        datetime.date(*(int(part) for part in match.groups()))
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    match = _TIME.fullmatch(text)
    if not match:
        return False
    hour, minute, second, _sign, off_hour, off_minute = match.groups()
    return (int(hour) <= 23 and int(minute) <= 59 and int(second) <= 60  # 60: a leap second
            and (off_hour is None or (int(off_hour) <= 23 and int(off_minute) <= 59)))


def _is_date_time(text: str) -> bool:
    return text[10:11] in ("T", "t") and _is_date(text[:10]) and _is_time(text[11:])


def _is_hostname(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    if "%" in text:  # a zone id is not part of the format
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_email(text: str) -> bool:
    local, at, domain = text.rpartition("@")
    if not at or not local or len(local) > 64:
        return False
    if not all(_ATOM.fullmatch(part) for part in local.split(".")):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        return _is_ipv6(literal[5:]) if literal.startswith("IPv6:") else _is_ipv4(literal)
    return _is_hostname(domain)


def _ascii_shape(text: str) -> str:
    """Non-ASCII characters as a letter: an IDN form checked by the ASCII rule's shape."""
    return _NON_ASCII.sub("a", text)


def _is_uuid(text: str) -> bool:
    return bool(_UUID.fullmatch(text)) and bool(uuid.UUID(text))


def _is_regex(text: str) -> bool:
    try:
        compile_pattern(text)
    except ValueError:
        return False
    return True


def _full(rx: re.Pattern[str], *, percent: bool = False) -> Callable[[str], bool]:
    if percent:  # a % must start a %XX escape
        return lambda text: bool(rx.fullmatch(text)) and not _BAD_PERCENT.search(text)
    return lambda text: bool(rx.fullmatch(text))


FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "date": _is_date,
    "time": _is_time,
    "date-time": _is_date_time,
    "duration": _full(_DURATION),
    "email": _is_email,
    "idn-email": lambda text: _is_email(_ascii_shape(text)),
    "hostname": _is_hostname,
    "idn-hostname": lambda text: _is_hostname(_ascii_shape(text)),
    "ipv4": _is_ipv4,
    "ipv6": _is_ipv6,
    "uri": _full(_URI, percent=True),
    "uri-reference": _full(_URI_REFERENCE, percent=True),
    "iri": _full(_IRI, percent=True),
    "iri-reference": _full(_IRI_REFERENCE, percent=True),
    "uuid": _is_uuid,
    "regex": _is_regex,
    "json-pointer": _full(_JSON_POINTER),
    "relative-json-pointer": _full(_RELATIVE_POINTER),
}
"""The `format` values evalq checks: a test of a string (a value of another type passes, as
the specification says)."""


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for name, test in FORMAT_CHECKS.items():
        checker.checks(name)(
            lambda instance, test=test: not isinstance(instance, str) or test(instance))
    return checker


FORMAT_CHECKER = _format_checker()


def unchecked_formats(schema: dict[str, Any]) -> list[str]:
    """The `format` values of a schema that evalq does not check."""
    return sorted({value for key, value in _walk(schema)
                   if key == "format" and isinstance(value, str) and value not in FORMAT_CHECKS})


def _bounded_validator(schema: dict[str, Any], *, formats: bool = True) -> Any:
    """A validator of the schema's draft whose regular expressions cannot run away, checking
    `format` (FORMAT_CHECKS) unless `formats` is false. ValueError for a schema evalq cannot
    bound: a bad pattern, or patternProperties together with unevaluatedProperties
    (jsonschema matches those with the stdlib's re)."""
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON Schema at {exc.json_path}: {exc.message}") from None
    keywords = {key for key, _ in _walk(schema)}
    if {"patternProperties", "unevaluatedProperties"} <= keywords:
        raise ValueError("patternProperties together with unevaluatedProperties is not "
                         "supported (their patterns could not be given a time limit); use "
                         "additionalProperties instead of unevaluatedProperties")
    for pattern in _patterns(schema):
        try:
            compile_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"invalid regular expression {quote_pattern(pattern)} in the schema: "
                             f"{exc}") from None
    bounded = {k: fn for k, fn in _BOUNDED_KEYWORDS.items() if k in cls.VALIDATORS}
    return extend(cls, bounded)(schema, format_checker=FORMAT_CHECKER if formats else None)


def _schema_errors(validator: Any, data: Any, scorer: str) -> list[Any]:
    """The validation errors of `data`, sorted by path; an unresolvable $ref: could not score."""
    try:
        with regex_budget():
            return sorted(validator.iter_errors(data), key=lambda e: e.json_path)
    except Unresolvable as exc:
        raise ScorerError(f"{scorer}: the schema has a $ref that cannot be resolved "
                          f"({exc}); inline the referenced schema under $defs") from exc


def _listed(errors: list[Any]) -> str:
    listed = "; ".join(f"{e.json_path}: {e.message[:160]}" for e in errors[:MAX_LISTED_ERRORS])
    more = len(errors) - MAX_LISTED_ERRORS
    return (f"{len(errors)} schema violation(s): {listed}"
            + (f" (and {more} more)" if more > 0 else ""))


def _check_schema(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise TypeError(f"schema must be a JSON Schema object, got {type(schema).__name__}")


@register_scorer("json_schema", version="2")
def json_schema(*, schema: dict[str, Any], formats: bool = True) -> ScorerFn:
    """Output is JSON valid against a JSON Schema (draft from its $schema); `format` is checked
    (date, time, date-time, duration, email, hostname, ipv4, ipv6, uri, uuid, regex,
    json-pointer...) unless formats=false."""
    _check_schema(schema)
    check_bool("formats", formats)
    validator = _bounded_validator(schema, formats=formats)
    unchecked = unchecked_formats(schema) if formats else []
    note = f" (format not checked: {', '.join(unchecked)})" if unchecked else ""

    def score(sample: Sample) -> ScoreValue:
        data, problem = _parse_json(sample, "json_schema")
        if problem is not None:
            return ScoreValue(0.0, False, problem)
        errors = _schema_errors(validator, data, "json_schema")
        meta: dict[str, Any] = {"unchecked_formats": unchecked} if unchecked else {}
        if not errors:
            return ScoreValue(1.0, True, "output matches the schema" + note, meta or None)
        return ScoreValue(0.0, False, _listed(errors) + note,
                          {"errors": [e.json_path for e in errors], **meta})

    return score


# --- contains_json ----------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n(.*?)```", re.DOTALL)
MAX_JSON_STARTS = 1_000  # '{' of the prose tried at most: bounds the work on a hostile text
_DECODER = json.JSONDecoder()


def json_in_text(text: str) -> list[Any]:
    """The JSON values of a text: the whole text if it is a JSON object or array; else each
    fenced code block (```json or ```) whose content is JSON, then each JSON object `{...}`
    of the prose (outermost first, a value already found is not listed again)."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return [json.loads(stripped)]
        except (ValueError, RecursionError):
            pass
    found: list[Any] = []
    for match in _FENCE.finditer(text):
        try:
            found.append(json.loads(match.group(1)))
        except (ValueError, RecursionError):
            continue
    start, tried = text.find("{"), 0
    while start != -1 and tried < MAX_JSON_STARTS:
        tried += 1
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if not any(json_equal(value, seen) for seen in found):
            found.append(value)
        start = text.find("{", end)
    return found


@register_scorer("contains_json", version="1")
def contains_json(*, schema: dict[str, Any] | None = None, formats: bool = True) -> ScorerFn:
    """The output contains JSON: the whole output, a ``` code fence, or an object {...} in the
    prose (promptfoo's contains-json); with `schema`, at least one of them is valid against
    it (formats checked as json_schema's)."""
    check_bool("formats", formats)
    validator = None
    note = ""
    if schema is not None:
        _check_schema(schema)
        validator = _bounded_validator(schema, formats=formats)
        unchecked = unchecked_formats(schema) if formats else []
        note = f" (format not checked: {', '.join(unchecked)})" if unchecked else ""

    def score(sample: Sample) -> ScoreValue:
        values = json_in_text(output_text(sample, "contains_json"))
        if not values:
            return ScoreValue(0.0, False, "no JSON in the output (whole, fenced, or an object "
                              "in the text)")
        meta: dict[str, Any] = {"found": len(values)}
        if validator is None:
            return ScoreValue(1.0, True, f"output contains JSON: {_short(values[0])}", meta)
        first_errors: list[Any] = []
        for index, value in enumerate(values):
            errors = _schema_errors(validator, value, "contains_json")
            if not errors:
                return ScoreValue(1.0, True, f"JSON {index + 1} of {len(values)} matches the "
                                  f"schema{note}: {_short(value)}", {**meta, "matched": index})
            first_errors = first_errors or errors
        return ScoreValue(0.0, False, f"no JSON in the output matches the schema ({len(values)} "
                          f"found; the first: {_listed(first_errors)}){note}", meta)

    return score


# --- json_field -------------------------------------------------------------------------------

_PATH = re.compile(r"(?:[^.\[\]]+|\[-?\d+\])(?:\.[^.\[\]]+|\[-?\d+\])*")
_STEP = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]")


def parse_path(path: str) -> list[str | int]:
    """`a.b[0].c` -> ["a", "b", 0, "c"]; ValueError for anything else."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise ValueError(f"path {path!r} is not like a.b[0].c or items[2] (keys joined by dots, "
                         "list indexes in brackets)")
    return [key if key else int(index) for key, index in _STEP.findall(path)]


def _lookup(data: Any, steps: list[str | int]) -> tuple[Any, str]:
    """(value at the path or _MISSING, the part of the path that was found)."""
    found = ""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(data, list) or not -len(data) <= step < len(data):
                return _MISSING, found
            found += f"[{step}]"
        else:
            if not isinstance(data, dict) or step not in data:
                return _MISSING, found
            found += f".{step}" if found else step
        data = data[step]
    return data, found


@register_scorer("json_field", version="1", reference_param="value")
def json_field(*, path: str, value: Any = None) -> ScorerFn:
    """The JSON output's field at `path` (a.b[0].c) equals `value` (default: expected)."""
    steps = parse_path(path)

    def score(sample: Sample) -> ScoreValue:
        reference = value if value is not None else sample.expected
        if reference is None:
            raise ScorerError("json_field: the test case has no \"expected\" and the scorer "
                              "got no value")
        data, problem = _parse_json(sample, "json_field")
        if problem is not None:
            return ScoreValue(0.0, False, problem)
        found, reached = _lookup(data, steps)
        if found is _MISSING:
            where = f" (found up to {reached!r})" if reached else ""
            return ScoreValue(0.0, False, f"no field at path {path!r}{where}")
        if json_equal(found, reference):
            return ScoreValue(1.0, True, f"{path} = {_short(found)}")
        return ScoreValue(0.0, False, f"{path} = {_short(found)}, expected {_short(reference)}",
                          {"found": found})

    return score


# --- numeric ----------------------------------------------------------------------------------

# A number: an optional sign (not glued to a word, as in COVID-19; "−" U+2212 and the small
# and full-width hyphen-minus count as minus), digits with optional thousands separators,
# decimals and an exponent. A whole token only: no letter, digit or "_" right before or after
# it ("42abc", "H2O", "v1.2.3" hold no number), nor a "." then one after it.
_MINUS_SIGNS = "\u2212\ufe63\uff0d"
_NUMBER = re.compile(
    rf"(?:(?<![\w.])[-+{_MINUS_SIGNS}])?(?<![\w.])"
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?!\.?\w)"
)
_TO_ASCII_MINUS = str.maketrans(dict.fromkeys(_MINUS_SIGNS, "-"))
POSITIONS = ("last", "first", "any")


def _number(token: str) -> float | None:
    number = float(token.translate(_TO_ASCII_MINUS).replace(",", ""))
    return number if math.isfinite(number) else None


def numbers_in(text: str) -> list[float]:
    """The numbers of a text, in order: the whole (stripped) text if it is one number, else
    every number token in it."""
    text = text.strip()
    whole = _NUMBER.fullmatch(text)
    tokens = [whole.group(0)] if whole else [m.group(0) for m in _NUMBER.finditer(text)]
    return [n for n in map(_number, tokens) if n is not None]


def parse_number(text: str, *, anywhere: bool) -> float | None:
    """The whole (stripped) text as a number, else with `anywhere` the first number in it."""
    text = text.strip()
    match = _NUMBER.fullmatch(text) or (_NUMBER.search(text) if anywhere else None)
    return _number(match.group(0)) if match else None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    return parse_number(value, anywhere=False) if isinstance(value, str) else None


def _targets(reference: Any) -> list[float] | None:
    """The acceptable numbers (a list: any of them), or None if one is not a number."""
    refs = reference if isinstance(reference, list) else [reference]
    numbers = [_as_number(ref) for ref in refs]
    return None if not refs or any(n is None for n in numbers) else numbers  # type: ignore[return-value]


@register_scorer("numeric", version="2", reference_param="value")
def numeric(*, value: Any = None, abs_tol: float | None = None,
            rel_tol: float | None = None, position: str = "last") -> ScorerFn:
    """The number in the output (the last, the first, or any: `position`; a whole token, not
    glued to letters) is within tolerance of `value` (default: expected; a list: any of them)."""
    if value is not None and _targets(value) is None:
        raise ValueError(f"value must be a number, a numeric string or a non-empty list of "
                         f"them, got {value!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    absolute = 1e-9 if abs_tol is None and rel_tol is None else 0.0
    if abs_tol is not None:
        absolute = check_number("abs_tol", abs_tol)
    relative = 0.0 if rel_tol is None else check_number("rel_tol", rel_tol)
    tolerance = " and ".join(f"{k} {v:g}" for k, v in (("abs_tol", absolute),
                                                       ("rel_tol", relative)) if v)

    def close(got: float, wants: list[float]) -> float | None:
        return next((w for w in wants
                     if math.isclose(got, w, rel_tol=relative, abs_tol=absolute)), None)

    def score(sample: Sample) -> ScoreValue:
        reference = value if value is not None else sample.expected
        if reference is None:
            raise ScorerError("numeric: the test case has no \"expected\" and the scorer got "
                              "no value")
        wants = _targets(reference)
        if wants is None:
            raise ScorerError(f"numeric: expected {_short(reference)} is not a number (or a "
                              "non-empty list of numbers)")
        shown = " or ".join(f"{w:.15g}" for w in wants[:5]) + (" or ..." if len(wants) > 5
                                                               else "")
        found = numbers_in(output_text(sample, "numeric"))
        if not found:
            return ScoreValue(0.0, False, f"no number in the output (expected {shown})",
                              {"output_number": None, "expected_number": wants[0]})
        if position == "any":
            hit = next(((got, want) for got in found
                        if (want := close(got, wants)) is not None), None)
            if hit is not None:
                return ScoreValue(1.0, True, f"output number {hit[0]:.15g} vs expected "
                                  f"{hit[1]:.15g}: within {tolerance or 'exact match'}",
                                  {"output_number": hit[0], "expected_number": hit[1],
                                   "numbers_found": len(found)})
            return ScoreValue(0.0, False, f"none of the {len(found)} numbers in the output is "
                              f"within {tolerance or 'exact match'} of {shown}",
                              {"output_number": None, "expected_number": wants[0],
                               "numbers_found": len(found)})
        got = found[-1] if position == "last" else found[0]
        want = close(got, wants)
        ok = want is not None
        meta = {"output_number": got, "expected_number": want if ok else wants[0]}
        which = "" if len(found) == 1 else f" ({position} of {len(found)} numbers)"
        return ScoreValue(1.0 if ok else 0.0, ok,
                          f"output {got:.15g}{which} vs expected "
                          f"{shown if want is None else format(want, '.15g')}: "
                          f"{'within' if ok else 'outside'} {tolerance or 'exact match'}", meta)

    return score
