"""Regular expressions that cannot run away: a size limit and a deadline.

Regular expressions that come from a run or a dataset (the regex scorer's pattern, a
JSON Schema's `pattern`) are compiled and run by the `regex` package, whose matches
take a timeout and release the GIL: a catastrophic pattern costs its own scorer at
most the time limit, never a stuck thread or a frozen event loop.
"""

from __future__ import annotations

import functools
import re
import re._parser as sre_parse  # the stdlib's pattern parser: measures a pattern cheaply
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import regex as regex_engine

from models.settings import get_settings
from workers.errors import ScorerError

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


def quote_pattern(pattern: str, limit: int = 200) -> str:
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
