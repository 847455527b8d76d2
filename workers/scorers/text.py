"""Text scorers: substrings, prefixes, similarity (edit distance, difflib, token F1, ROUGE-N),
length, and latency/cost budgets."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter
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
    """Normalised edit-distance similarity 1 - distance/longest to expected (best of a list)
    >= threshold. Not promptfoo's levenshtein, an absolute distance: that is edit_distance."""
    if isinstance(threshold, int | float) and not isinstance(threshold, bool) and threshold > 1:
        raise ValueError(f"threshold is a similarity between 0 and 1, got {threshold}; for an "
                         "absolute edit distance (promptfoo's levenshtein threshold) use "
                         f'{{"type": "edit_distance", "max_distance": {threshold:g}}}')
    return _similarity_scorer("levenshtein", _levenshtein_similarity, value, threshold,
                              ignore_case)


@register_scorer("fuzzy", version="1", reference_param="value")
def fuzzy(*, value: Any = None, threshold: float = 0.8, ignore_case: bool = True) -> ScorerFn:
    """difflib SequenceMatcher ratio to expected (best of a list) >= threshold."""
    return _similarity_scorer("fuzzy", _fuzzy_similarity, value, threshold, ignore_case)


# --- absolute edit distance (promptfoo's levenshtein) -----------------------------------------

MAX_EDIT_CELLS = MAX_LEVENSHTEIN_CHARS ** 2  # the work levenshtein allows, in DP cells


def bounded_distance(a: str, b: str, limit: int) -> int | None:
    """The edit distance of a and b if it is at most `limit`, else None. Only the diagonal
    band |i - j| <= limit of the dynamic programme is computed (Ukkonen): O(limit x length)."""
    shortest = min(len(a), len(b))
    start = 0
    while start < shortest and a[start] == b[start]:
        start += 1
    end = 0
    while end < shortest - start and a[-1 - end] == b[-1 - end]:
        end += 1
    a, b = a[start:len(a) - end], b[start:len(b) - end]
    if len(a) < len(b):
        a, b = b, a
    n, m = len(a), len(b)
    if n - m > limit:
        return None
    if m == 0:
        return n
    over = limit + 1  # any value above the limit
    previous = [j if j <= limit else over for j in range(m + 1)]
    current = [over] * (m + 1)
    for i in range(1, n + 1):
        low, high = max(1, i - limit), min(m, i + limit)
        current[low - 1] = i if low == 1 and i <= limit else over
        if high < m:
            current[high + 1] = over
        best_in_row = current[low - 1]
        char_a = a[i - 1]
        for j in range(low, high + 1):
            cell = previous[j - 1] + (char_a != b[j - 1])
            if previous[j] + 1 < cell:
                cell = previous[j] + 1
            if current[j - 1] + 1 < cell:
                cell = current[j - 1] + 1
            current[j] = cell if cell < over else over
            if cell < best_in_row:
                best_in_row = cell
        if best_in_row > limit:
            return None
        previous, current = current, previous
    return previous[m] if previous[m] <= limit else None


@register_scorer("edit_distance", version="1", reference_param="value")
def edit_distance(*, value: Any = None, max_distance: int = 5,
                  ignore_case: bool = False) -> ScorerFn:
    """Levenshtein distance to expected (the nearest of a list) is at most max_distance edits:
    promptfoo's levenshtein (its threshold, default 5, case-sensitive); value 1 or 0."""
    _check_reference("value", value)
    if isinstance(max_distance, bool) or not isinstance(max_distance, int):
        raise TypeError(f"max_distance must be a whole number of edits, got {max_distance!r}")
    if max_distance < 0:
        raise ValueError(f"max_distance must be at least 0, got {max_distance}")
    check_bool("ignore_case", ignore_case)

    def score(sample: Sample) -> ScoreValue:
        out = _fold(output_text(sample, "edit_distance"), ignore_case)
        refs = reference_texts(value, sample, "edit_distance")
        best: tuple[int, str] | None = None
        for ref in refs:
            folded = _fold(ref, ignore_case)
            if (2 * max_distance + 1) * min(len(out), len(folded)) > MAX_EDIT_CELLS:
                raise ScorerError(f"edit_distance: texts of {len(out):,} and {len(folded):,} "
                                  f"characters with max_distance {max_distance} are more than "
                                  "this scorer compares; use fuzzy for long texts")
            found = bounded_distance(out, folded, max_distance)
            if found is not None and (best is None or found < best[0]):
                best = (found, ref)
        if best is not None:
            return ScoreValue(1.0, True, f"edit distance {best[0]} to {best[1][:80]!r}, at most "
                              f"{max_distance}", {"distance": best[0], "reference": best[1]})
        return ScoreValue(0.0, False, f"edit distance to {_listing(refs)} is more than "
                          f"{max_distance}", {"distance": None})

    return score


# --- token overlap: SQuAD F1 and ROUGE-N ------------------------------------------------------

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_WORDS = re.compile(r"[^\W_]+")


def _is_punctuation(char: str) -> bool:
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation, as tokens: lower case, punctuation removed (ASCII and
    Unicode), the articles a/an/the removed, split on whitespace."""
    text = unicodedata.normalize("NFC", text).casefold()
    text = "".join(" " if char.isspace() else char for char in text
                   if not _is_punctuation(char))
    return _ARTICLES.sub(" ", text).split()


def token_f1_score(prediction: list[str], reference: list[str]) -> float:
    """SQuAD's F1 of two token lists (multisets: a repeated token counts as often as it is
    shared); both empty: 1, one empty: 0."""
    if not prediction or not reference:
        return float(prediction == reference)
    shared = sum((Counter(prediction) & Counter(reference)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(prediction), shared / len(reference)
    return 2 * precision * recall / (precision + recall)


def _threshold_verdict(name: str, best: float, threshold: float, reference: str,
                       meta: dict[str, Any]) -> ScoreValue:
    ok = best >= threshold
    return ScoreValue(best, ok, f"{name} {best:.3f} against {reference[:80]!r}, "
                      f"{'at least' if ok else 'below'} threshold {threshold}",
                      {**meta, "reference": reference})


@register_scorer("token_f1", version="1", reference_param="value")
def token_f1(*, value: Any = None, threshold: float = 1.0) -> ScorerFn:
    """SQuAD token F1 to expected (the best of a list), as Inspect AI's f1: lower case, no
    punctuation or articles, whitespace tokens; passes at >= threshold (1.0: every token)."""
    _check_reference("value", value)
    check_number("threshold", threshold, low=0.0, high=1.0)

    def score(sample: Sample) -> ScoreValue:
        out = squad_tokens(output_text(sample, "token_f1"))
        refs = reference_texts(value, sample, "token_f1")
        best, best_ref = max(((token_f1_score(out, squad_tokens(r)), r) for r in refs),
                             key=lambda pair: pair[0])
        return _threshold_verdict("token F1", best, threshold, best_ref, {"f1": best})

    return score


ROUGE_MEASURES = ("recall", "precision", "f1")


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n_scores(candidate: str, reference: str, n: int) -> dict[str, float] | None:
    """ROUGE-N of a candidate against one reference: recall (shared n-grams / the reference's),
    precision (/ the candidate's) and their F1, with n-gram counts clipped; tokens are runs of
    letters and digits, lower-cased. None when the reference has fewer than n tokens."""
    ref = _ngrams(_WORDS.findall(unicodedata.normalize("NFC", reference).casefold()), n)
    if not ref:
        return None
    cand = _ngrams(_WORDS.findall(unicodedata.normalize("NFC", candidate).casefold()), n)
    shared = sum((cand & ref).values())
    recall = shared / sum(ref.values())
    precision = shared / sum(cand.values()) if cand else 0.0
    f1 = 2 * precision * recall / (precision + recall) if shared else 0.0
    return {"recall": recall, "precision": precision, "f1": f1}


@register_scorer("rouge_n", version="1", reference_param="value")
def rouge_n(*, value: Any = None, n: int = 1, threshold: float = 0.75,
            measure: str = "recall") -> ScorerFn:
    """ROUGE-N to expected (the best of a list): n-gram recall by default, as promptfoo's
    rouge-n (threshold 0.75), or precision / f1 (`measure`); punctuation is not a token."""
    _check_reference("value", value)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4:
        raise ValueError(f"n must be a whole number from 1 to 4, got {n!r}")
    check_number("threshold", threshold, low=0.0, high=1.0)
    if measure not in ROUGE_MEASURES:
        raise ValueError(f"measure must be one of {', '.join(ROUGE_MEASURES)}, got {measure!r}")

    def score(sample: Sample) -> ScoreValue:
        out = output_text(sample, "rouge_n")
        refs = reference_texts(value, sample, "rouge_n")
        scored = [(s, r) for r in refs if (s := rouge_n_scores(out, r, n)) is not None]
        if not scored:
            raise ScorerError(f"rouge_n: the reference has fewer than {n} words: no "
                              f"{n}-grams to recall")
        best, best_ref = max(scored, key=lambda pair: pair[0][measure])
        return _threshold_verdict(f"ROUGE-{n} {measure}", best[measure], threshold, best_ref,
                                  dict(best))

    return score


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
