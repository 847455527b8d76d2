"""Deterministic scorers: string matching and format checks, no model calls."""

from __future__ import annotations

import json
import re
import string
import unicodedata
from typing import Any

from workers.errors import ScorerError
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.registry import register_scorer

_PUNCT = str.maketrans("", "", string.punctuation)
_WS = re.compile(r"\s+")


def normalise(
    text: str, *, ignore_case: bool, ignore_whitespace: bool, ignore_punctuation: bool
) -> str:
    """The text compared by the string scorers (Unicode NFC first)."""
    text = unicodedata.normalize("NFC", text)
    if ignore_case:
        text = text.casefold()
    if ignore_punctuation:
        text = text.translate(_PUNCT)
    if ignore_whitespace:
        text = _WS.sub(" ", text).strip()
    return text


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _targets(explicit: Any, sample: Sample, scorer: str) -> list[str]:
    """The reference value(s): the parameter if given, else the test case's expected."""
    ref = explicit if explicit is not None else sample.expected
    if ref is None:
        raise ScorerError(
            f"{scorer}: the test case has no \"expected\" and the scorer got no value"
        )
    refs = ref if isinstance(ref, list) else [ref]
    if not refs:
        raise ScorerError(f"{scorer}: the reference value is an empty list")
    return [_as_text(r) for r in refs]


def _output(sample: Sample, scorer: str) -> str:
    if sample.output is None:
        raise ScorerError(f"{scorer}: the target produced no text output")
    return sample.output


@register_scorer("exact_match", version="1", reference_param="value")
def exact_match(
    *,
    ignore_case: bool = True,
    ignore_whitespace: bool = True,
    ignore_punctuation: bool = False,
    value: Any = None,
) -> ScorerFn:
    """Output equals expected (any of them, if a list) after normalisation."""
    opts = {"ignore_case": ignore_case, "ignore_whitespace": ignore_whitespace,
            "ignore_punctuation": ignore_punctuation}

    def score(sample: Sample) -> ScoreValue:
        out = normalise(_output(sample, "exact_match"), **opts)
        refs = _targets(value, sample, "exact_match")
        hit = next((r for r in refs if normalise(r, **opts) == out), None)
        if hit is not None:
            return ScoreValue(1.0, True, f"output equals {hit!r}")
        return ScoreValue(0.0, False, f"output {sample.output!r} != expected {refs[0]!r}"
                          + (f" (or {len(refs) - 1} others)" if len(refs) > 1 else ""))

    return score


@register_scorer("contains", version="1", reference_param="value")
def contains(*, value: Any = None, ignore_case: bool = True) -> ScorerFn:
    """Output contains expected (or `value`); with a list, any of them."""

    def score(sample: Sample) -> ScoreValue:
        out = unicodedata.normalize("NFC", _output(sample, "contains"))
        refs = _targets(value, sample, "contains")
        hay = out.casefold() if ignore_case else out
        for ref in refs:
            ref = unicodedata.normalize("NFC", ref)
            if (ref.casefold() if ignore_case else ref) in hay:
                return ScoreValue(1.0, True, f"output contains {ref!r}")
        return ScoreValue(0.0, False, f"output does not contain {refs[0]!r}")

    return score


@register_scorer("regex", version="1", reference_param="pattern")
def regex(
    *, pattern: str | None = None, ignore_case: bool = False, full_match: bool = False
) -> ScorerFn:
    """Output matches `pattern` (search anywhere, or the whole output with full_match).
    Without a pattern, the test case's expected is used as the pattern."""
    flags = re.IGNORECASE if ignore_case else 0
    compiled = None
    if pattern is not None:
        try:
            compiled = re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc

    def score(sample: Sample) -> ScoreValue:
        out = _output(sample, "regex")
        patterns = [compiled] if compiled is not None else []
        if not patterns:
            for ref in _targets(None, sample, "regex"):  # any of a list of patterns
                try:
                    patterns.append(re.compile(ref, flags))
                except re.error as exc:
                    raise ScorerError(f"regex: expected {ref!r} is not a valid pattern: "
                                      f"{exc}") from exc
        for rx in patterns:
            found = rx.fullmatch(out) if full_match else rx.search(out)
            if found:
                return ScoreValue(1.0, True, f"matched {found.group(0)[:80]!r}")
        return ScoreValue(0.0, False, f"no match for /{patterns[0].pattern}/")

    return score


@register_scorer("json_valid", version="1")
def json_valid(*, require_object: bool = False) -> ScorerFn:
    """Output parses as JSON (optionally: as a JSON object)."""

    def score(sample: Sample) -> ScoreValue:
        out = _output(sample, "json_valid")
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError as exc:
            return ScoreValue(0.0, False, f"not JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}")
        except (ValueError, RecursionError) as exc:
            return ScoreValue(0.0, False, f"not usable JSON: {str(exc)[:120]}")
        if require_object and not isinstance(parsed, dict):
            return ScoreValue(0.0, False, f"JSON {type(parsed).__name__}, not an object")
        return ScoreValue(1.0, True, "valid JSON")

    return score
