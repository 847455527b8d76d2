"""Text scorers: substrings, prefixes, similarity, length, and latency/cost budgets."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable
from typing import Any

from workers.errors import ScorerError
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.checks import (
    check_bool,
    check_bounds,
    check_number,
    output_text,
    reference_texts,
)
from workers.scorers.registry import register_scorer

MAX_LEVENSHTEIN_CHARS = 5_000


# --- helpers ----------------------------------------------------------------------------------

def _check_reference(name: str, value: Any, *, list_only: bool = False) -> None:
    if list_only and value is not None and not isinstance(value, list):
        raise TypeError(f"{name} must be a list of values, got {value!r}")
    if isinstance(value, list) and not value:
        raise ValueError(f"{name} is an empty list; give at least one value or leave it unset "
                         "to use the test case's expected")


def _fold(text: str, ignore_case: bool) -> str:
    text = unicodedata.normalize("NFC", text)
    return text.casefold() if ignore_case else text


def _listing(values: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(v[:80]) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


# --- substrings and prefixes ------------------------------------------------------------------

@register_scorer("contains_all", version="1", reference_param="values")
def contains_all(*, values: list[Any] | None = None, ignore_case: bool = True) -> ScorerFn:
    """Output contains every one of `values` (default: expected); value = fraction found."""
    _check_reference("values", values, list_only=True)
    check_bool("ignore_case", ignore_case)

    def score(sample: Sample) -> ScoreValue:
        out = _fold(output_text(sample, "contains_all"), ignore_case)
        refs = reference_texts(values, sample, "contains_all")
        missing = [r for r in refs if _fold(r, ignore_case) not in out]
        meta = {"missing": missing}
        if not missing:
            return ScoreValue(1.0, True, f"output contains all {len(refs)} values", meta)
        return ScoreValue((len(refs) - len(missing)) / len(refs), False,
                          f"missing {len(missing)} of {len(refs)}: {_listing(missing)}", meta)

    return score


@register_scorer("contains_any", version="1", reference_param="values")
def contains_any(*, values: list[Any] | None = None, ignore_case: bool = True) -> ScorerFn:
    """Output contains at least one of `values` (default: expected)."""
    _check_reference("values", values, list_only=True)
    check_bool("ignore_case", ignore_case)

    def score(sample: Sample) -> ScoreValue:
        out = _fold(output_text(sample, "contains_any"), ignore_case)
        refs = reference_texts(values, sample, "contains_any")
        hit = next((r for r in refs if _fold(r, ignore_case) in out), None)
        if hit is not None:
            return ScoreValue(1.0, True, f"output contains {hit[:80]!r}")
        return ScoreValue(0.0, False, f"output contains none of {_listing(refs)}")

    return score


@register_scorer("starts_with", version="1", reference_param="value")
def starts_with(*, value: Any = None, ignore_case: bool = False, strip: bool = True) -> ScorerFn:
    """Output starts with `value` (default: expected); with a list, any of them."""
    _check_reference("value", value)
    check_bool("ignore_case", ignore_case)
    check_bool("strip", strip)

    def prepare(text: str) -> str:
        return _fold(text.strip() if strip else text, ignore_case)

    def score(sample: Sample) -> ScoreValue:
        out = prepare(output_text(sample, "starts_with"))
        refs = reference_texts(value, sample, "starts_with")
        hit = next((r for r in refs if out.startswith(prepare(r))), None)
        if hit is not None:
            return ScoreValue(1.0, True, f"output starts with {hit[:80]!r}")
        return ScoreValue(0.0, False, f"output starts with {out[:40]!r}, not with "
                          f"{'any of ' if len(refs) > 1 else ''}{_listing(refs)}")

    return score


# --- similarity -------------------------------------------------------------------------------

def levenshtein_distance(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), two-row dynamic programme."""
    shortest = min(len(a), len(b))
    start = 0  # a shared prefix and suffix cost nothing: trim them first
    while start < shortest and a[start] == b[start]:
        start += 1
    end = 0
    while end < shortest - start and a[-1 - end] == b[-1 - end]:
        end += 1
    a, b = a[start:len(a) - end], b[start:len(b) - end]
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        left = i
        for char_b, diagonal, above in zip(b, previous[:-1], previous[1:], strict=True):
            best = diagonal if char_a == char_b else diagonal + 1  # no min(): 2x faster
            if above + 1 < best:
                best = above + 1
            if left + 1 < best:
                best = left + 1
            current.append(best)
            left = best
        previous = current
    return previous[-1]


def _levenshtein_similarity(a: str, b: str) -> float:
    for text in (a, b):
        if len(text) > MAX_LEVENSHTEIN_CHARS:
            raise ScorerError(
                f"levenshtein: a text of {len(text):,} characters is longer than the "
                f"{MAX_LEVENSHTEIN_CHARS:,} this scorer compares; use fuzzy for long texts"
            )
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein_distance(a, b) / longest


def _fuzzy_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _similarity_scorer(name: str, measure: Callable[[str, str], float], value: Any,
                       threshold: float, ignore_case: bool) -> ScorerFn:
    _check_reference("value", value)
    check_number("threshold", threshold, low=0.0, high=1.0)
    check_bool("ignore_case", ignore_case)

    def score(sample: Sample) -> ScoreValue:
        out = _fold(output_text(sample, name), ignore_case)
        refs = reference_texts(value, sample, name)
        scored = [(measure(out, _fold(r, ignore_case)), r) for r in refs]
        best, best_ref = max(scored, key=lambda pair: pair[0])  # the first of equals
        best = min(1.0, max(0.0, best))
        verdict = "at least" if best >= threshold else "below"
        return ScoreValue(best, best >= threshold,
                          f"similarity {best:.3f} to {best_ref[:80]!r}, {verdict} "
                          f"threshold {threshold}", {"similarity": best, "reference": best_ref})

    return score


@register_scorer("levenshtein", version="1", reference_param="value")
def levenshtein(*, value: Any = None, threshold: float = 0.8,
                ignore_case: bool = True) -> ScorerFn:
    """Edit-distance similarity 1 - distance/longest to expected (best of a list) >= threshold."""
    return _similarity_scorer("levenshtein", _levenshtein_similarity, value, threshold,
                              ignore_case)


@register_scorer("fuzzy", version="1", reference_param="value")
def fuzzy(*, value: Any = None, threshold: float = 0.8, ignore_case: bool = True) -> ScorerFn:
    """difflib SequenceMatcher ratio to expected (best of a list) >= threshold."""
    return _similarity_scorer("fuzzy", _fuzzy_similarity, value, threshold, ignore_case)


# --- length and budgets -----------------------------------------------------------------------

@register_scorer("length", version="1")
def length(*, min_chars: int | None = None, max_chars: int | None = None,
           min_words: int | None = None, max_words: int | None = None) -> ScorerFn:
    """Output length (characters after stripping, whitespace-separated words) within bounds."""
    if all(b is None for b in (min_chars, max_chars, min_words, max_words)):
        raise ValueError("give at least one of min_chars, max_chars, min_words, max_words")
    check_bounds("min_chars", min_chars, "max_chars", max_chars)
    check_bounds("min_words", min_words, "max_words", max_words)

    def score(sample: Sample) -> ScoreValue:
        text = output_text(sample, "length").strip()
        chars, words = len(text), len(text.split())
        problems = []
        for count, unit, low, high in ((chars, "characters", min_chars, max_chars),
                                       (words, "words", min_words, max_words)):
            if low is not None and count < low:
                problems.append(f"{count} {unit}, fewer than {low}")
            if high is not None and count > high:
                problems.append(f"{count} {unit}, more than {high}")
        meta = {"chars": chars, "words": words}
        if problems:
            return ScoreValue(0.0, False, f"length out of bounds: {'; '.join(problems)}", meta)
        return ScoreValue(1.0, True, f"{chars} characters, {words} words: within bounds", meta)

    return score


@register_scorer("latency", version="1")
def latency(*, threshold_ms: float) -> ScorerFn:
    """The target answered within threshold_ms milliseconds."""
    limit = check_number("threshold_ms", threshold_ms)

    def score(sample: Sample) -> ScoreValue:
        if sample.latency_ms is None:
            raise ScorerError("latency: the target's latency was not recorded")
        ok = sample.latency_ms <= limit
        return ScoreValue(1.0 if ok else 0.0, ok, f"latency {sample.latency_ms:.0f} ms "
                          f"{'<=' if ok else '>'} {limit:g} ms")

    return score


@register_scorer("cost", version="1")
def cost(*, max_usd: float) -> ScorerFn:
    """The target's call cost at most max_usd dollars."""
    limit = check_number("max_usd", max_usd)

    def score(sample: Sample) -> ScoreValue:
        if sample.cost_usd is None:
            raise ScorerError("cost: the target's cost is unknown")
        ok = sample.cost_usd <= limit
        return ScoreValue(1.0 if ok else 0.0, ok, f"cost ${sample.cost_usd:.6f} "
                          f"{'<=' if ok else '>'} ${limit:g}")

    return score
