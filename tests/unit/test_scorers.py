"""Tests of the scorer registry, the built-in deterministic scorers and ScoreValue."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from workers.errors import ScorerConfigError, ScorerError, UnknownScorer, WorkerError
from workers.scorers import (
    ResolvedScorer,
    Sample,
    ScorerFn,
    ScoreValue,
    known_scorers,
    lookup,
    rebind,
    register_scorer,
    registry,
    resolve_scorers,
)

BUILTINS = {"exact_match", "contains", "regex", "json_valid"}
THIS_MODULE = __name__  # "tests.unit.test_scorers" under pytest


def brevity(sample: Sample) -> ScoreValue:
    """Shorter outputs score higher: 1.0 up to 10 characters, 0.0 from 110."""
    length = len(sample.output or "")
    value = min(1.0, max(0.0, 1.0 - (length - 10) / 100))
    return ScoreValue(value, explanation=f"{length} characters")


brevity.version = "3"  # type: ignore[attr-defined]


def one(spec: str | dict[str, Any]) -> ResolvedScorer:
    (scorer,) = resolve_scorers([spec])
    return scorer


def score(spec: str | dict[str, Any], output: str | None, expected: Any = None) -> ScoreValue:
    verdict = one(spec).fn(Sample(input="the question", expected=expected, output=output))
    assert isinstance(verdict, ScoreValue)
    return verdict


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Scorers registered by a test disappear after it (the registry is a module global)."""
    known_scorers()  # built-ins registered before the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield


# --- the registry ---------------------------------------------------------------------------


def test_known_scorers_lists_the_builtins_sorted() -> None:
    known = known_scorers()
    assert BUILTINS <= set(known)
    assert list(known) == sorted(known)
    for name in BUILTINS:
        assert known[name].name == name
        # exact_match is at 2 since JSON objects and lists compare as structures (issue 13).
        assert known[name].version == ("2" if name == "exact_match" else "1")
        assert known[name].description  # first line of the factory's docstring


def test_lookup_returns_the_registered_info() -> None:
    info = lookup("regex")
    assert info.name == "regex"
    assert info.reference_param == "pattern"
    assert set(info.parameters()) == {"pattern", "ignore_case", "full_match"}
    assert lookup("json_valid").reference_param is None


def test_unknown_scorer_lists_the_known_names() -> None:
    with pytest.raises(UnknownScorer) as info:
        resolve_scorers(["exact_macth"])
    message = str(info.value)
    assert "'exact_macth'" in message
    for name in BUILTINS:
        assert name in message
    assert "module:function" in message
    assert isinstance(info.value, WorkerError)


def test_unknown_parameter_names_the_valid_parameters() -> None:
    with pytest.raises(ScorerConfigError) as info:
        resolve_scorers([{"type": "exact_match", "ignorecase": False}])
    message = str(info.value)
    assert "ignorecase" in message
    for param in ("ignore_case", "ignore_whitespace", "ignore_punctuation", "value"):
        assert param in message


def test_unknown_parameter_of_a_scorer_without_parameters_says_none() -> None:
    with pytest.raises(ScorerConfigError, match=r"\(none\)"):
        resolve_scorers([{"type": f"{THIS_MODULE}:brevity", "limit": 3}])


@pytest.mark.parametrize("spec", [42, None, {"pattern": "x"}, {"type": 3}, ["regex"]])
def test_a_spec_that_is_neither_a_name_nor_a_typed_object(spec: Any) -> None:
    with pytest.raises(ScorerConfigError, match='"type"'):
        resolve_scorers([spec])


def test_names_are_stripped() -> None:
    assert one("  contains ").name == "contains"


def test_duplicate_names_get_numbered_labels() -> None:
    scorers = resolve_scorers(
        [
            "exact_match",
            "contains",
            {"type": "exact_match", "ignore_case": False},
            {"type": "exact_match", "value": "x"},
        ]
    )
    assert [s.label for s in scorers] == [
        "exact_match",
        "contains",
        "exact_match#2",
        "exact_match#3",
    ]
    assert [s.name for s in scorers] == ["exact_match", "contains", "exact_match", "exact_match"]
    assert scorers[2].params == {"ignore_case": False}


def test_spec_is_json_and_round_trips_through_rebind() -> None:
    scorers = resolve_scorers(["regex", {"type": "regex", "pattern": r"^\d+$", "full_match": True}])
    for scorer in scorers:
        stored = json.loads(json.dumps(scorer.spec()))
        again = rebind(stored)
        assert again.spec() == scorer.spec()
        assert (again.label, again.name, again.version) == (scorer.label, scorer.name, "1")
    second = rebind(json.loads(json.dumps(scorers[1].spec())))
    assert second.label == "regex#2"
    assert second.params == {"pattern": r"^\d+$", "full_match": True}
    sample = Sample(input="q", expected=None, output="123")
    assert second.fn(sample).value == 1.0
    assert second.fn(Sample(input="q", expected=None, output="123 apples")).value == 0.0


def test_rebind_validates_again() -> None:
    with pytest.raises(ScorerConfigError):
        rebind({"label": "regex", "type": "regex", "version": "1", "params": {"pattern": "("}})


def test_needs_expected() -> None:
    assert one("exact_match").needs_expected is True
    assert one({"type": "exact_match", "value": "Paris"}).needs_expected is False
    assert one("contains").needs_expected is True
    assert one({"type": "contains", "value": "x"}).needs_expected is False
    assert one("regex").needs_expected is True
    assert one({"type": "regex", "pattern": "x"}).needs_expected is False
    assert one("json_valid").needs_expected is False
    assert one(f"{THIS_MODULE}:brevity").needs_expected is False


def test_register_scorer_records_name_version_description_and_params(
    isolated_registry: None,
) -> None:
    @register_scorer("shorter_than", version="7", reference_param="limit")
    def shorter_than(*, limit: int | None = None, strict: bool = False) -> ScorerFn:
        """Output is shorter than `limit` characters.

        More text that is not the description."""

        def fn(sample: Sample) -> ScoreValue:
            bound = limit if limit is not None else int(sample.expected)
            ok = len(sample.output or "") < bound
            return ScoreValue(1.0 if ok else 0.0)

        return fn

    assert "shorter_than" in known_scorers()
    info = lookup("shorter_than")
    assert info.version == "7"
    assert info.description == "Output is shorter than `limit` characters."
    assert info.parameters() == {"limit": None, "strict": False}

    bound = one({"type": "shorter_than", "limit": 5})
    assert bound.spec() == {
        "label": "shorter_than",
        "type": "shorter_than",
        "version": "7",
        "params": {"limit": 5},
    }
    assert bound.needs_expected is False
    assert one("shorter_than").needs_expected is True
    assert bound.fn(Sample(input="q", expected=None, output="abc")).passed is True
    assert bound.fn(Sample(input="q", expected=None, output="abcdef")).passed is False


def test_a_required_parameter_must_be_given(isolated_registry: None) -> None:
    @register_scorer("needs_word")
    def needs_word(*, word: str) -> ScorerFn:
        return lambda sample: ScoreValue(float(word in (sample.output or "")))

    with pytest.raises(ScorerConfigError, match="needs parameter word"):
        resolve_scorers(["needs_word"])
    assert one({"type": "needs_word", "word": "hi"}).fn(Sample("q", None, "oh hi")).value == 1.0


def test_a_factory_that_rejects_its_arguments_is_a_config_error(isolated_registry: None) -> None:
    @register_scorer("picky")
    def picky(*, n: int = 1) -> ScorerFn:
        if n < 1:
            raise ValueError("n must be at least 1")
        return lambda sample: ScoreValue(1.0)

    with pytest.raises(ScorerConfigError, match="'picky': n must be at least 1"):
        resolve_scorers([{"type": "picky", "n": 0}])


# --- custom scorers by dotted path ----------------------------------------------------------


def test_custom_scorer_by_dotted_path_resolves_and_scores() -> None:
    name = f"{THIS_MODULE}:brevity"
    assert name == "tests.unit.test_scorers:brevity"
    scorer = one(name)
    assert scorer.label == name
    assert scorer.name == name
    assert scorer.version == "3"
    assert scorer.params == {}
    assert scorer.fn is brevity

    short = scorer.fn(Sample(input="q", expected=None, output="ok"))
    middle = scorer.fn(Sample(input="q", expected=None, output="x" * 60))
    long = scorer.fn(Sample(input="q", expected=None, output="x" * 500))
    assert (short.value, short.passed) == (1.0, True)
    assert middle.value == pytest.approx(0.5)
    assert middle.passed is False
    assert middle.explanation == "60 characters"
    assert (long.value, long.passed) == (0.0, False)
    assert rebind(scorer.spec()).fn is brevity


@pytest.mark.parametrize(
    "name", [f"{THIS_MODULE}:no_such_function", "no_such_module_evalq:fn", f"{THIS_MODULE}:"]
)
def test_custom_scorer_that_cannot_be_imported(name: str) -> None:
    with pytest.raises(UnknownScorer, match="cannot import scorer"):
        resolve_scorers([name])


@pytest.mark.parametrize("name", [":brevity", ".test_scorers:brevity"])
def test_malformed_dotted_path_is_an_unknown_scorer(name: str) -> None:
    with pytest.raises(UnknownScorer):
        resolve_scorers([name])


def test_registered_factory_by_dotted_path_takes_its_parameters(
    isolated_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    @register_scorer("ends_with", version="2")
    def ends_with(*, suffix: str = "!") -> ScorerFn:
        return lambda sample: ScoreValue(float((sample.output or "").endswith(suffix)))

    monkeypatch.setattr(sys.modules[THIS_MODULE], "ends_with_factory", ends_with, raising=False)
    scorer = one({"type": f"{THIS_MODULE}:ends_with_factory", "suffix": "?"})
    assert scorer.version == "2"
    assert scorer.fn(Sample(input="q", expected=None, output="why?")).value == 1.0


# --- exact_match ----------------------------------------------------------------------------


def test_exact_match_defaults_ignore_case_and_whitespace() -> None:
    verdict = score("exact_match", "  paris\n", expected="Paris")
    assert (verdict.value, verdict.passed) == (1.0, True)
    assert "Paris" in (verdict.explanation or "")
    assert score("exact_match", "new   york", expected="New York").value == 1.0
    assert score("exact_match", "Paris.", expected="Paris").value == 0.0
    assert score("exact_match", "Pariss", expected="Paris").value == 0.0


def test_exact_match_case_sensitive() -> None:
    spec = {"type": "exact_match", "ignore_case": False}
    assert score(spec, "paris", expected="Paris").value == 0.0
    assert score(spec, "Paris", expected="Paris").value == 1.0


def test_exact_match_whitespace_sensitive() -> None:
    spec = {"type": "exact_match", "ignore_whitespace": False}
    assert score(spec, "Paris\n", expected="Paris").value == 0.0
    assert score(spec, "new  york", expected="New York").value == 0.0
    assert score(spec, "new york", expected="New York").value == 1.0


def test_exact_match_ignore_punctuation() -> None:
    spec = {"type": "exact_match", "ignore_punctuation": True}
    assert score(spec, "Paris.", expected="Paris").value == 1.0
    assert score(spec, "it's 4!", expected="its 4").value == 1.0
    assert score(spec, "Lyon.", expected="Paris").value == 0.0


def test_exact_match_unicode_normalised() -> None:
    assert score("exact_match", "cafe\u0301", expected="caf\u00e9").value == 1.0


def test_exact_match_any_of_a_list_of_expected() -> None:
    hit = score("exact_match", "NYC", expected=["New York", "nyc"])
    assert (hit.value, hit.passed) == (1.0, True)
    assert "'nyc'" in (hit.explanation or "")
    miss = score("exact_match", "LA", expected=["New York", "nyc", "Big Apple"])
    assert (miss.value, miss.passed) == (0.0, False)
    assert "'New York'" in (miss.explanation or "") and "2 others" in (miss.explanation or "")


def test_exact_match_non_string_expected_is_compared_as_json() -> None:
    assert score("exact_match", "42", expected=42).value == 1.0
    assert score("exact_match", "True", expected=True).value == 1.0
    assert score("exact_match", '{"a": 1, "b": 2}', expected={"b": 2, "a": 1}).value == 1.0
    assert score("exact_match", "43", expected=42).value == 0.0


def test_exact_match_explicit_value_overrides_expected() -> None:
    spec = {"type": "exact_match", "value": "yes"}
    assert score(spec, "Yes", expected="no").value == 1.0
    assert score(spec, "no", expected="no").value == 0.0
    assert score(spec, "yes", expected=None).value == 1.0
    assert score({"type": "exact_match", "value": ["y", "yes"]}, "Y").value == 1.0


# --- contains -------------------------------------------------------------------------------


def test_contains() -> None:
    verdict = score("contains", "The capital is PARIS, of course.", expected="Paris")
    assert (verdict.value, verdict.passed) == (1.0, True)
    assert score("contains", "The capital is Lyon.", expected="Paris").value == 0.0
    case_sensitive = {"type": "contains", "ignore_case": False}
    assert score(case_sensitive, "PARIS", expected="Paris").value == 0.0
    assert score(case_sensitive, "in Paris", expected="Paris").value == 1.0


def test_contains_any_of_a_list_and_explicit_value() -> None:
    assert score("contains", "I'd say Lyon", expected=["Paris", "lyon"]).value == 1.0
    assert score("contains", "I'd say Nice", expected=["Paris", "lyon"]).value == 0.0
    spec = {"type": "contains", "value": "sorry"}
    assert score(spec, "Sorry, I cannot", expected="irrelevant").value == 1.0
    assert score(spec, "Sure!", expected="Sure").value == 0.0


# --- regex ----------------------------------------------------------------------------------


def test_regex_with_pattern_searches_anywhere() -> None:
    spec = {"type": "regex", "pattern": r"\d{3}-\d{4}"}
    verdict = score(spec, "call 555-1234 now")
    assert (verdict.value, verdict.passed) == (1.0, True)
    assert "555-1234" in (verdict.explanation or "")
    miss = score(spec, "call me")
    assert (miss.value, miss.passed) == (0.0, False)
    assert r"\d{3}-\d{4}" in (miss.explanation or "")


def test_regex_full_match() -> None:
    spec = {"type": "regex", "pattern": r"\d+", "full_match": True}
    assert score(spec, "12345").value == 1.0
    assert score(spec, "12345 apples").value == 0.0
    assert score({"type": "regex", "pattern": r"\d+"}, "12345 apples").value == 1.0


def test_regex_ignore_case() -> None:
    assert score({"type": "regex", "pattern": "paris"}, "PARIS").value == 0.0
    assert score({"type": "regex", "pattern": "paris", "ignore_case": True}, "PARIS").value == 1.0


def test_regex_uses_expected_as_the_pattern() -> None:
    assert score("regex", "answer: 42", expected=r"\b4\d\b").value == 1.0
    assert score("regex", "answer: 52", expected=r"\b4\d\b").value == 0.0
    full = {"type": "regex", "full_match": True}
    assert score(full, "answer: 42", expected=r"4\d").value == 0.0
    assert score(full, "42", expected=r"4\d").value == 1.0


def test_regex_invalid_pattern_is_rejected_at_resolve_time() -> None:
    with pytest.raises(ScorerConfigError) as info:
        resolve_scorers(["exact_match", {"type": "regex", "pattern": "(unclosed"}])
    assert "'regex'" in str(info.value)
    assert "(unclosed" in str(info.value)


def test_regex_invalid_expected_pattern_cannot_score() -> None:
    with pytest.raises(ScorerError, match="expected .* is not a valid pattern"):
        score("regex", "anything", expected="[oops")


# --- json_valid -----------------------------------------------------------------------------


@pytest.mark.parametrize("output", ['{"a": 1}', "[1, 2]", '"text"', "3.5", "null", ' {"a": []} '])
def test_json_valid_accepts_json(output: str) -> None:
    verdict = score("json_valid", output)
    assert (verdict.value, verdict.passed) == (1.0, True)


@pytest.mark.parametrize("output", ["", "{'a': 1}", '{"a": 1', "yes", '{"a": 1} trailing'])
def test_json_valid_rejects_non_json(output: str) -> None:
    verdict = score("json_valid", output)
    assert (verdict.value, verdict.passed) == (0.0, False)
    assert (verdict.explanation or "").startswith("not JSON")


def test_json_valid_require_object() -> None:
    spec = {"type": "json_valid", "require_object": True}
    assert score(spec, '{"a": 1}').value == 1.0
    verdict = score(spec, "[1, 2]")
    assert (verdict.value, verdict.passed) == (0.0, False)
    assert "list" in (verdict.explanation or "")
    assert score(spec, "{bad").value == 0.0


def test_json_valid_ignores_expected() -> None:
    assert score("json_valid", "{}", expected="something else").value == 1.0
    assert one("json_valid").fn(Sample(input="q", expected=None, output="[]")).value == 1.0


def test_json_valid_huge_number_is_scored() -> None:
    verdict = score("json_valid", "1" * 5000)
    assert verdict.value in (0.0, 1.0)


# --- could not score ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exact_match", "contains", "regex"])
def test_no_expected_and_no_value_cannot_score(name: str) -> None:
    with pytest.raises(ScorerError, match=rf'{name}: the test case has no "expected"'):
        score(name, "some output", expected=None)


@pytest.mark.parametrize(
    "spec",
    [
        "exact_match",
        {"type": "contains", "value": "x"},
        {"type": "regex", "pattern": "x"},
        "json_valid",
    ],
)
def test_no_output_cannot_score(spec: str | dict[str, Any]) -> None:
    with pytest.raises(ScorerError, match="produced no text output"):
        score(spec, None, expected="x")


@pytest.mark.parametrize("name", ["exact_match", "contains", "regex"])
def test_empty_expected_list_is_scored_or_cannot_score(name: str) -> None:
    try:
        verdict = score(name, "anything", expected=[])
    except ScorerError:
        return
    assert verdict.value == 0.0


def test_scorer_errors_are_worker_errors() -> None:
    for cls in (ScorerError, UnknownScorer, ScorerConfigError):
        assert issubclass(cls, WorkerError)
        assert cls.__doc__
    assert not issubclass(ScorerError, ScorerConfigError)


# --- ScoreValue -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-0.01, 1.01, 2, -1, float("nan"), float("inf")])
def test_score_value_rejects_values_outside_0_1(value: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScoreValue(value)


@pytest.mark.parametrize(
    ("value", "passed"), [(0.0, False), (0.5, False), (0.999, False), (1.0, True), (1, True)]
)
def test_score_value_passed_defaults_to_value_at_least_1(value: float, passed: bool) -> None:
    verdict = ScoreValue(value)
    assert verdict.passed is passed
    assert verdict.judge_cost_usd == 0.0 and verdict.judge_tokens == 0


def test_score_value_explicit_passed_wins() -> None:
    assert ScoreValue(0.5, passed=True).passed is True
    assert ScoreValue(1.0, passed=False).passed is False
