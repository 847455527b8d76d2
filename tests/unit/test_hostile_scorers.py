"""Hostile scorer specs and scorers: data never names code, every scorer has a deadline,
regular expressions stop by themselves."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.settings import get_settings
from models.tables import ScoreBase
from tests.support import EnvPatch
from workers.errors import ScorerConfigError, ScorerError, UnknownScorer
from workers.offline.plan import Case
from workers.runtime import aio
from workers.scorers import (
    ResolvedScorer,
    Sample,
    ScoreValue,
    known_scorers,
    register_scorer,
    registry,
    resolve_scorers,
)
from workers.scorers.registry import bind_from_data
from workers.scoring import assertion_scorers, run_scorer, scorer_deadline

SAMPLE = Sample(input="q", expected=None, output="out")
CATASTROPHIC = "(a|aa)+$"  # exponential even for the regex package
SUBJECT = "a" * 40 + "!"


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Scorers registered by a test disappear after it."""
    known_scorers()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield


@pytest.fixture
def short_deadline() -> Iterator[float]:
    with EnvPatch(EVALQ_SCORER_TIMEOUT_S="0.5"):
        yield 0.5


@pytest.fixture
def booby_trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """(module name, marker file): importing the module creates the marker."""
    name = f"evalq_trap_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def f(sample):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def scored(scorer: ResolvedScorer, sample: Sample = SAMPLE) -> ScoreBase:
    return aio.run(run_scorer(scorer, sample))


def plain(fn: Any, label: str = "custom") -> ResolvedScorer:
    return ResolvedScorer(label, label, "1", {}, fn)


# --- data is never code ---------------------------------------------------------------------


def test_an_import_path_from_data_is_refused_without_importing_it(booby_trap) -> None:
    module, marker = booby_trap
    with pytest.raises(UnknownScorer, match="is an import path") as info:
        bind_from_data({"type": f"{module}:f"}, "assert:x")
    assert "not imported" in str(info.value) and "--scorer" in str(info.value)
    assert not marker.exists() and module not in sys.modules
    # The operator's own spec may name code: the same path imports and scores.
    (scorer,) = resolve_scorers([f"{module}:f"])
    assert marker.exists() and scored(scorer).value == 1.0


@pytest.mark.parametrize("name", ["this:s", "sys:exit", "os:system", "os.system",
                                  "builtins:eval", " sys:exit "])
def test_any_import_path_from_data_is_refused(name: str) -> None:
    imported = "this" in sys.modules
    with pytest.raises(UnknownScorer, match="import path"):
        bind_from_data({"type": name}, "assert:x")
    assert ("this" in sys.modules) == imported


def test_data_may_name_registered_scorers(isolated_registry: None) -> None:
    @register_scorer("shouts")
    def shouts(*, word: str = "HI") -> Any:
        return lambda sample: ScoreValue(float(word in (sample.output or "")))

    assert bind_from_data({"type": "shouts", "word": "OUT"}, "a").fn(
        Sample("q", None, "SHOUT OUT")).value == 1.0
    assert bind_from_data("exact_match", "b").name == "exact_match"
    with pytest.raises(UnknownScorer, match="unknown scorer 'nope'"):
        bind_from_data({"type": "nope"}, "c")


def test_a_stored_assertion_naming_code_is_could_not_score_and_not_imported(booby_trap
                                                                           ) -> None:
    module, marker = booby_trap
    case = Case(1, "k", "q", None, {}, ({"type": f"{module}:f"},
                                        {"type": "contains", "value": "out"},
                                        {"type": "regex", "pattern": "("},
                                        {"type": "custom", "value": {"a": 1}}), None)
    scorers = assertion_scorers(case.assertions)
    assert [s.label for s in scorers] == [f"assert:{module}:f", "assert:contains",
                                          "assert:regex"]
    rows = [scored(s) for s in scorers]
    assert rows[0].value is None and "import path" in rows[0].error
    assert rows[1].value == 1.0 and rows[1].error is None
    assert rows[2].value is None and "invalid regular expression" in rows[2].error
    assert not marker.exists() and module not in sys.modules


# --- deadlines and what a scorer may raise ----------------------------------------------------


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(),
                                   RuntimeError("boom")])
def test_whatever_a_sync_scorer_raises_is_could_not_score(error: BaseException) -> None:
    def raises(sample: Sample) -> ScoreValue:
        raise error

    row = scored(plain(raises))
    assert row.value is None and row.error.startswith(type(error).__name__)


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), RuntimeError("boom")])
def test_whatever_an_async_scorer_raises_is_could_not_score_and_the_loop_lives_on(
        error: BaseException) -> None:
    async def raises(sample: Sample) -> ScoreValue:
        await asyncio.sleep(0)
        raise error

    row = scored(plain(raises))
    assert row.value is None and row.error.startswith(type(error).__name__)
    assert aio.get_loop().is_running()
    assert scored(plain(lambda sample: 1.0)).value == 1.0


def test_a_sync_function_returning_a_coroutine_is_awaited() -> None:
    async def later() -> ScoreValue:
        return ScoreValue(0.5)

    assert scored(plain(lambda sample: later())).value == 0.5


def test_a_slow_sync_scorer_times_out_off_the_loop(short_deadline: float) -> None:
    def sleepy(sample: Sample) -> ScoreValue:
        time.sleep(3)
        return ScoreValue(1.0)

    async def both() -> tuple[ScoreBase, float]:
        ticks = 0

        async def tick() -> None:  # the loop keeps running while the scorer sleeps
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        row = await run_scorer(plain(sleepy), SAMPLE)
        ticker.cancel()
        return row, ticks

    started = time.monotonic()
    row, ticks = aio.run(both())
    assert time.monotonic() - started < short_deadline + 1.0
    assert row.value is None and row.error.startswith("timed out")
    assert "EVALQ_SCORER_TIMEOUT_S" in row.error
    assert ticks > 5  # ~50 when nothing else runs; 0 if the loop were held


def test_an_async_scorer_that_ignores_cancellation_still_times_out(short_deadline: float
                                                                   ) -> None:
    async def stubborn(sample: Sample) -> ScoreValue:
        for _ in range(10):
            try:
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                pass
        return ScoreValue(1.0)

    started = time.monotonic()
    row = scored(plain(stubborn))
    assert time.monotonic() - started < short_deadline + 1.0
    assert row.value is None and row.error.startswith("timed out")


def test_judges_get_the_network_deadline() -> None:
    settings = get_settings()
    (judge,) = resolve_scorers([{"type": "llm_rubric", "criteria": "ok"}])
    (steel,) = resolve_scorers([{"type": "llm_as_judge", "value": "ok"}])
    (plain_scorer,) = resolve_scorers(["exact_match"])
    network = max(settings.scorer_timeout_s, settings.request_timeout_s * settings.max_attempts)
    assert judge.network and steel.network and not plain_scorer.network
    assert scorer_deadline(judge, settings) == network == 360.0
    assert scorer_deadline(plain_scorer, settings) == settings.scorer_timeout_s == 10.0


# --- regular expressions stop by themselves --------------------------------------------------


def test_the_regex_scorer_stops_a_catastrophic_pattern(short_deadline: float) -> None:
    (rx,) = resolve_scorers([{"type": "regex", "pattern": CATASTROPHIC}])
    started = time.monotonic()
    with pytest.raises(ScorerError, match="did not finish within 0.5 s"):
        rx.fn(Sample("q", None, SUBJECT))
    assert time.monotonic() - started < short_deadline + 1.0
    assert rx.fn(Sample("q", None, "aaaa")).value == 1.0


def test_nested_plus_is_fast_with_the_regex_package() -> None:
    (rx,) = resolve_scorers([{"type": "regex", "pattern": "(a+)+$"}])
    started = time.monotonic()
    assert rx.fn(Sample("q", None, SUBJECT)).value == 0.0
    assert time.monotonic() - started < 2.0  # the stdlib's re: 27 a's took 9 s, 40 far longer


def test_a_catastrophic_expected_pattern_stops_too(short_deadline: float) -> None:
    (rx,) = resolve_scorers([{"type": "regex", "full_match": True}])
    with pytest.raises(ScorerError, match="did not finish"):
        rx.fn(Sample("q", [CATASTROPHIC, "x"], SUBJECT))


@pytest.mark.parametrize(("pattern", "why"), [
    ("a{1000000}", "once its repeats are written out"),
    ("(?:a{1000}){1000}", "once its repeats are written out"),
    ("(x)" * 10_000, "longer than 20,000 characters"),
])
def test_a_pattern_too_big_to_compile_is_refused_at_bind(pattern: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ScorerConfigError, match=why):
        resolve_scorers([{"type": "regex", "pattern": pattern}])
    assert time.monotonic() - started < 1.0


def test_open_repeats_are_fine() -> None:
    (rx,) = resolve_scorers([{"type": "regex", "pattern": r"^\d{1,100000}x+$"}])
    assert rx.fn(Sample("q", None, "123xx")).value == 1.0


def schema_scorer(schema: dict[str, Any]) -> ResolvedScorer:
    return resolve_scorers([{"type": "json_schema", "schema": schema}])[0]


@pytest.mark.parametrize(("schema", "output"), [
    ({"type": "string", "pattern": CATASTROPHIC}, f'"{SUBJECT}"'),
    ({"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}},
     f'{{"{SUBJECT}": 1}}'),
    ({"type": "object", "patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False},
     f'{{"{SUBJECT}": 1}}'),
    ({"type": "object", "propertyNames": {"pattern": CATASTROPHIC}}, f'{{"{SUBJECT}": 1}}'),
])
def test_json_schema_patterns_stop_by_themselves(short_deadline: float,
                                                 schema: dict[str, Any], output: str) -> None:
    scorer = schema_scorer(schema)
    started = time.monotonic()
    with pytest.raises(ScorerError, match="did not finish"):
        scorer.fn(Sample("q", None, output))
    assert time.monotonic() - started < short_deadline + 1.0


def test_json_schema_pattern_keywords_keep_their_meaning() -> None:
    scorer = schema_scorer({
        "type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"}},
        "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False})
    assert scorer.fn(Sample("q", None, '{"id": "abc", "x-n": 2}')).value == 1.0
    bad = scorer.fn(Sample("q", None, '{"id": "ABC", "x-n": "2", "other": 1}'))
    assert bad.value == 0.0 and bad.metadata == {"errors": ["$", "$.id", "$['x-n']"]}
    assert "'other' does not match any of the regexes: '^x-'" in (bad.explanation or "")
    assert "'ABC' does not match '^[a-z]+$'" in (bad.explanation or "")
    closed = schema_scorer({"type": "object", "properties": {"a": {}},
                            "additionalProperties": False})
    assert "Additional properties are not allowed ('b' was unexpected)" in (
        closed.fn(Sample("q", None, '{"a": 1, "b": 2}')).explanation or "")


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "string", "pattern": "a{1000000}"}, "once its repeats are written out"),
    ({"patternProperties": {"(": {}}}, r"'\(' is not a 'regex'"),
    ({"patternProperties": {"^x": {}}, "unevaluatedProperties": False},
     "unevaluatedProperties is not supported"),
])
def test_json_schema_patterns_are_checked_at_bind(schema: dict[str, Any], message: str
                                                  ) -> None:
    with pytest.raises(ScorerConfigError, match=message):
        schema_scorer(schema)
