"""Deterministic scorers: string matching and format checks, no model calls.

Regular expressions that come from a run or a dataset (the regex scorer's pattern, a
JSON Schema's `pattern`) are compiled and run by the `regex` package, whose matches
take a timeout and release the GIL: a catastrophic pattern costs its own scorer at
most the time limit, never a stuck thread or a frozen event loop.
"""

from __future__ import annotations

import functools
import json
import re
import re._parser as sre_parse  # the stdlib's pattern parser: measures a pattern cheaply
import string
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import regex as regex_engine

from models.settings import get_settings
from workers.errors import ScorerError
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.registry import register_scorer

_PUNCT = str.maketrans("", "", string.punctuation)
_WS = re.compile(r"\s+")

# --- bounded regular expressions ----------------------------------------------------------

# The regex package writes out the mandatory copies of a repeat when it compiles
# (a{1000000} takes ~270 MB and 0.3 s): a pattern longer than this, or bigger once its
# repeats are written out, is refused before it is parsed or compiled.
MAX_PATTERN_SIZE = 20_000
_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)
# (deadline on time.monotonic(), the limit it was set from), for the matches of one scorer.
_budget: ContextVar[tuple[float, float] | None] = ContextVar("evalq_regex_budget", default=None)


def _subpatterns(av: Any) -> Iterator[Any]:
    if isinstance(av, sre_parse.SubPattern):
        yield av
    elif isinstance(av, list | tuple):
        for part in av:
            yield from _subpatterns(part)


def _written_out_size(parsed: Any) -> int:
    """Elements of a parsed pattern with its repeats' minimum counts multiplied out."""
    total = 0
    for op, av in parsed:
        if op in _REPEATS:
            low, _high, body = av
            total += max(1, low) * _written_out_size(body)
        else:
            total += 1 + sum(_written_out_size(sub) for sub in _subpatterns(av))
        if total > MAX_PATTERN_SIZE:
            break
    return total


def _clip(pattern: str, limit: int = 200) -> str:
    """A pattern as quoted in a message (a huge one cut short)."""
    return repr(pattern) if len(pattern) <= limit else repr(pattern[:limit]) + "..."


def compile_pattern(pattern: Any, *, ignore_case: bool = False) -> Any:
    """`pattern` compiled by the regex package, for `bounded_match`. ValueError (saying
    why) for an invalid pattern or one too large to compile safely; TypeError for a
    pattern that is not a string."""
    if not isinstance(pattern, str):
        raise TypeError(f"a regular expression must be a string, got {pattern!r}")
    return _compile(pattern, ignore_case)


@functools.lru_cache(maxsize=512)
def _compile(pattern: str, ignore_case: bool) -> Any:
    if len(pattern) > MAX_PATTERN_SIZE:
        raise ValueError(f"longer than {MAX_PATTERN_SIZE:,} characters")
    try:  # the stdlib's syntax, as before the regex package: same patterns accepted
        parsed = sre_parse.parse(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("groups nested too deeply") from None
    if _written_out_size(parsed) > MAX_PATTERN_SIZE:
        raise ValueError(f"more than {MAX_PATTERN_SIZE:,} elements once its repeats are "
                         "written out (e.g. x{100000}); use a smaller minimum count, or x+")
    try:
        return regex_engine.compile(pattern, regex_engine.IGNORECASE if ignore_case else 0)
    except regex_engine.error as exc:
        raise ValueError(str(exc)) from None


@contextmanager
def regex_budget(seconds: float | None = None) -> Iterator[None]:
    """Every `bounded_match` inside shares one deadline, `seconds` from now (default:
    EVALQ_SCORER_TIMEOUT_S)."""
    limit = get_settings().scorer_timeout_s if seconds is None else seconds
    token = _budget.set((time.monotonic() + limit, limit))
    try:
        yield
    finally:
        _budget.reset(token)


def bounded_match(rx: Any, text: str, *, full: bool = False) -> Any:
    """`rx.search(text)` (or fullmatch) that gives up at the deadline of the enclosing
    `regex_budget` (without one: EVALQ_SCORER_TIMEOUT_S from now): ScorerError, "could
    not score"."""
    budget = _budget.get()
    if budget is None:
        limit = get_settings().scorer_timeout_s
        budget = (time.monotonic() + limit, limit)
    deadline, limit = budget
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return (rx.fullmatch if full else rx.search)(text, timeout=remaining)
    except TimeoutError:
        raise ScorerError(
            f"the regular expression /{rx.pattern[:80]}/ did not finish within {limit:g} s "
            f"on a text of {len(text):,} characters (EVALQ_SCORER_TIMEOUT_S): it backtracks "
            "catastrophically; rewrite nested repeats such as (a+)+ or (a|aa)+"
        ) from None


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
    compiled = None
    if pattern is not None:
        try:
            compiled = compile_pattern(pattern, ignore_case=ignore_case)
        except ValueError as exc:
            raise ValueError(f"invalid regular expression {_clip(pattern)}: {exc}") from None

    def score(sample: Sample) -> ScoreValue:
        out = _output(sample, "regex")
        patterns = [compiled] if compiled is not None else []
        if not patterns:
            for ref in _targets(None, sample, "regex"):  # any of a list of patterns
                try:
                    patterns.append(compile_pattern(ref, ignore_case=ignore_case))
                except ValueError as exc:
                    raise ScorerError(f"regex: expected {_clip(ref)} is not a valid pattern: "
                                      f"{exc}") from None
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
