"""Structured-output scorers: JSON Schema, one JSON field, and numeric answers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

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
from workers.scorers.checks import check_number, json_equal, output_text
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


def _bounded_validator(schema: dict[str, Any]) -> Any:
    """A validator of the schema's draft whose regular expressions cannot run away.
    ValueError for a schema evalq cannot bound: a bad pattern, or patternProperties
    together with unevaluatedProperties (jsonschema matches those with the stdlib's re)."""
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
    return extend(cls, bounded)(schema)


@register_scorer("json_schema", version="1")
def json_schema(*, schema: dict[str, Any]) -> ScorerFn:
    """Output is JSON that validates against a JSON Schema (draft from its $schema)."""
    if not isinstance(schema, dict):
        raise TypeError(f"schema must be a JSON Schema object, got {type(schema).__name__}")
    validator = _bounded_validator(schema)

    def score(sample: Sample) -> ScoreValue:
        data, problem = _parse_json(sample, "json_schema")
        if problem is not None:
            return ScoreValue(0.0, False, problem)
        try:
            with regex_budget():
                errors = sorted(validator.iter_errors(data), key=lambda e: e.json_path)
        except Unresolvable as exc:
            raise ScorerError(f"json_schema: the schema has a $ref that cannot be resolved "
                              f"({exc}); inline the referenced schema under $defs") from exc
        if not errors:
            return ScoreValue(1.0, True, "output matches the schema")
        listed = "; ".join(f"{e.json_path}: {e.message[:160]}"
                           for e in errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        return ScoreValue(0.0, False, f"{len(errors)} schema violation(s): {listed}"
                          + (f" (and {more} more)" if more > 0 else ""),
                          {"errors": [e.json_path for e in errors]})

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

# A number: optional sign (not glued to a word, as in COVID-19), digits with optional thousands
# separators, decimals and an exponent. Not part of a longer number on its left.
_NUMBER = re.compile(
    r"(?:(?<!\w)[-+])?(?<![\d.])(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
)


def parse_number(text: str, *, anywhere: bool) -> float | None:
    """The whole (stripped) text as a number, else with `anywhere` the first number in it."""
    text = text.strip()
    match = _NUMBER.fullmatch(text) or (_NUMBER.search(text) if anywhere else None)
    return float(match.group(0).replace(",", "")) if match else None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return parse_number(value, anywhere=False) if isinstance(value, str) else None


@register_scorer("numeric", version="1", reference_param="value")
def numeric(*, value: Any = None, abs_tol: float | None = None,
            rel_tol: float | None = None) -> ScorerFn:
    """The number in the output is within tolerance of `value` (default: expected)."""
    if value is not None and _as_number(value) is None:
        raise ValueError(f"value must be a number or a numeric string, got {value!r}")
    absolute = 1e-9 if abs_tol is None and rel_tol is None else 0.0
    if abs_tol is not None:
        absolute = check_number("abs_tol", abs_tol)
    relative = 0.0 if rel_tol is None else check_number("rel_tol", rel_tol)
    tolerance = " and ".join(f"{k} {v:g}" for k, v in (("abs_tol", absolute),
                                                       ("rel_tol", relative)) if v)

    def score(sample: Sample) -> ScoreValue:
        reference = value if value is not None else sample.expected
        if reference is None:
            raise ScorerError("numeric: the test case has no \"expected\" and the scorer got "
                              "no value")
        want = _as_number(reference)
        if want is None:
            raise ScorerError(f"numeric: expected {_short(reference)} is not a number")
        got = parse_number(output_text(sample, "numeric"), anywhere=True)
        if got is None:
            return ScoreValue(0.0, False, f"no number in the output (expected {want:.15g})")
        ok = math.isclose(got, want, rel_tol=relative, abs_tol=absolute)
        return ScoreValue(1.0 if ok else 0.0, ok,
                          f"output {got:.15g} vs expected {want:.15g}: "
                          f"{'within' if ok else 'outside'} {tolerance or 'exact match'}",
                          {"output_number": got, "expected_number": want})

    return score
