"""Deterministic scorers: string matching and format checks, no model calls.

The regex and regex_extract scorers' patterns are compiled and run by `bounded_regex`: a size
limit and a deadline, so a catastrophic pattern costs its own scorer at most the time limit.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from typing import Any

from workers.errors import ScorerError
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.bounded_regex import (
    bounded_match,
    compile_pattern,
    quote_pattern,
    regex_budget,
)
from workers.scorers.checks import check_bool, json_equal, output_text, reference_texts
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


def _parsed_output(text: str) -> tuple[Any, bool]:
    """(the output parsed as JSON, True) or (None, False)."""
    try:
        return json.loads(text), True
    except (ValueError, RecursionError):
        return None, False


@register_scorer("exact_match", version="2", reference_param="value")
def exact_match(
    *,
    ignore_case: bool = True,
    ignore_whitespace: bool = True,
    ignore_punctuation: bool = False,
    value: Any = None,
) -> ScorerFn:
    """Output equals expected (any of them, if a list) after normalisation; a JSON object or
    list expected is compared as a structure with the output parsed as JSON (key order and
    spacing do not matter, values do)."""
    opts = {"ignore_case": ignore_case, "ignore_whitespace": ignore_whitespace,
            "ignore_punctuation": ignore_punctuation}

    def score(sample: Sample) -> ScoreValue:
        text = output_text(sample, "exact_match")
        out = normalise(text, **opts)
        reference = value if value is not None else sample.expected
        raw = reference if isinstance(reference, list) else [reference]
        refs = reference_texts(value, sample, "exact_match")
        parsed, is_json = _parsed_output(text) if any(isinstance(r, dict | list) for r in raw) \
            else (None, False)
        for ref, ref_text in zip(raw, refs, strict=True):
            if isinstance(ref, dict | list):
                if is_json and json_equal(parsed, ref):
                    return ScoreValue(1.0, True, f"output is the JSON value {ref_text[:80]!r}")
            elif normalise(ref_text, **opts) == out:
                return ScoreValue(1.0, True, f"output equals {ref_text!r}")
        return ScoreValue(0.0, False, f"output {sample.output!r} != expected {refs[0]!r}"
                          + (f" (or {len(refs) - 1} others)" if len(refs) > 1 else ""))

    return score


@register_scorer("contains", version="1", reference_param="value")
def contains(*, value: Any = None, ignore_case: bool = True) -> ScorerFn:
    """Output contains expected (or `value`); with a list, any of them."""

    def score(sample: Sample) -> ScoreValue:
        out = unicodedata.normalize("NFC", output_text(sample, "contains"))
        refs = reference_texts(value, sample, "contains")
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
    compiled = None
    if pattern is not None:
        try:
            compiled = compile_pattern(pattern, ignore_case=ignore_case)
        except ValueError as exc:
            raise ValueError(f"invalid regular expression {quote_pattern(pattern)}: "
                             f"{exc}") from None

    def score(sample: Sample) -> ScoreValue:
        out = output_text(sample, "regex")
        patterns = [compiled] if compiled is not None else []
        if not patterns:
            for ref in reference_texts(None, sample, "regex"):  # any of a list of patterns
                try:
                    patterns.append(compile_pattern(ref, ignore_case=ignore_case))
                except ValueError as exc:
                    raise ScorerError(f"regex: expected {quote_pattern(ref)} is not a valid "
                                      f"pattern: {exc}") from None
        with regex_budget():
            for rx in patterns:
                found = bounded_match(rx, out, full=full_match)
                if found:
                    return ScoreValue(1.0, True, f"matched {found.group(0)[:80]!r}")
        return ScoreValue(0.0, False, f"no match for /{patterns[0].pattern}/")

    return score


@register_scorer("json_valid", version="1")
def json_valid(*, require_object: bool = False) -> ScorerFn:
    """Output parses as JSON (optionally: as a JSON object)."""

    def score(sample: Sample) -> ScoreValue:
        out = output_text(sample, "json_valid")
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


@register_scorer("regex_extract", version="1", reference_param="value")
def regex_extract(*, pattern: str, value: Any = None, ignore_case: bool = True,
                  match_all: bool = False) -> ScorerFn:
    """The first match of `pattern` in the output captures expected (Inspect AI's `pattern`):
    a capture group equals `value` (default: expected; a list: any of them), or with
    match_all every group that took part does."""
    check_bool("ignore_case", ignore_case)
    check_bool("match_all", match_all)
    try:
        compiled = compile_pattern(pattern, ignore_case=ignore_case)
    except ValueError as exc:
        raise ValueError(f"invalid regular expression {quote_pattern(pattern)}: {exc}") from None
    if compiled.groups == 0:
        raise ValueError(f"pattern {quote_pattern(pattern)} has no capture group: put the "
                         "answer in parentheses, e.g. ANSWER: (\\w+)")

    def fold(text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        return text.casefold() if ignore_case else text

    def score(sample: Sample) -> ScoreValue:
        out = output_text(sample, "regex_extract")
        refs = reference_texts(value, sample, "regex_extract")
        wanted = {fold(r) for r in refs}
        with regex_budget():
            found = bounded_match(compiled, out)
        if not found:
            return ScoreValue(0.0, False, f"no match for /{compiled.pattern[:80]}/ in the output")
        groups = [g for g in found.groups() if g is not None]
        meta = {"captured": groups}
        if match_all:
            ok = bool(groups) and all(fold(g) in wanted for g in groups)
            hit = groups[0] if ok else None
        else:
            hit = next((g for g in groups if fold(g) in wanted), None)
            ok = hit is not None
        if ok:
            return ScoreValue(1.0, True, f"captured {hit!r}, as expected", meta)
        shown = ", ".join(repr(g[:80]) for g in groups[:5]) or "nothing"
        return ScoreValue(0.0, False, f"captured {shown}; expected "
                          f"{'any of ' if len(refs) > 1 else ''}{refs[0][:80]!r}"
                          + (f" (or {len(refs) - 1} others)" if len(refs) > 1 else ""), meta)

    return score
