"""Tests of the text, structured-output and agent scorers, through the registry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from workers.errors import ScorerConfigError, ScorerError
from workers.scorers import Sample, ScoreValue, known_scorers, lookup, rebind, resolve_scorers
from workers.scorers.structured import parse_number
from workers.scorers.text import levenshtein_distance

NEW = {
    "contains_all": "values", "contains_any": "values", "starts_with": "value",
    "levenshtein": "value", "fuzzy": "value", "length": None, "latency": None, "cost": None,
    "json_schema": None, "json_field": "value", "numeric": "value",
    "tool_calls": None, "outcome": None, "step_count": None,
}


def run(spec: str | dict[str, Any], output: str | None = "", expected: Any = None,
        **fields: Any) -> ScoreValue:
    """Bind `spec` through the registry and score one sample."""
    (scorer,) = resolve_scorers([spec])
    verdict = scorer.fn(Sample(input="the question", expected=expected, output=output, **fields))
    assert isinstance(verdict, ScoreValue)
    return verdict


def config_error(spec: dict[str, Any]) -> str:
    """The ScorerConfigError message of a spec that must be refused at bind time."""
    with pytest.raises(ScorerConfigError) as info:
        resolve_scorers([spec])
    return str(info.value)


def call(name: str, arguments: Any = None, call_id: str = "c") -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "id": call_id}


# --- registration -----------------------------------------------------------------------------

def test_every_new_scorer_is_registered_with_a_description_and_reference() -> None:
    known = known_scorers()
    for name, reference in NEW.items():
        assert name in known, name
        # numeric (word boundaries, position, several targets) and json_schema (format
        # checked) changed their results in issue 13: version 2.
        assert known[name].version == ("2" if name in ("numeric", "json_schema") else "1")
        assert known[name].description and "\n" not in known[name].description
        assert known[name].reference_param == reference, name


def test_needs_expected_follows_the_reference_parameter() -> None:
    (plain, given, agent) = resolve_scorers([
        "contains_all", {"type": "contains_all", "values": ["a"]},
        {"type": "tool_calls", "calls": {"search": {"called": True}}},
    ])
    assert plain.needs_expected is True
    assert given.needs_expected is False
    assert agent.needs_expected is False


def test_a_stored_spec_binds_again() -> None:
    (scorer,) = resolve_scorers([{"type": "json_schema", "schema": {"type": "integer"}}])
    again = rebind(json.loads(json.dumps(scorer.spec())))
    for output, passed in (("7", True), ("7.5", False)):
        verdict = again.fn(Sample(input="q", expected=None, output=output))
        assert isinstance(verdict, ScoreValue) and verdict.passed is passed


def test_required_parameters_are_named() -> None:
    assert "threshold_ms" in config_error({"type": "latency"})
    assert "max_usd" in config_error({"type": "cost"})
    assert "schema" in config_error({"type": "json_schema"})
    assert "path" in config_error({"type": "json_field"})


# --- contains_all / contains_any --------------------------------------------------------------

def test_contains_all_scores_the_fraction_found_and_lists_the_missing() -> None:
    verdict = run({"type": "contains_all", "values": ["paris", "Lyon", "Nice"]},
                  "Paris and NICE are in France")
    assert verdict.value == pytest.approx(2 / 3)
    assert verdict.passed is False
    assert "'Lyon'" in (verdict.explanation or "")
    assert "Paris" not in (verdict.explanation or "")
    assert verdict.metadata == {"missing": ["Lyon"]}


def test_contains_all_passes_only_with_every_value() -> None:
    verdict = run({"type": "contains_all", "values": ["paris", "lyon"]}, "Lyon, then Paris")
    assert (verdict.value, verdict.passed) == (1.0, True)


def test_contains_all_respects_case_when_asked() -> None:
    verdict = run({"type": "contains_all", "values": ["Paris"], "ignore_case": False}, "paris")
    assert (verdict.value, verdict.passed) == (0.0, False)


def test_contains_all_defaults_to_expected_list_or_single_value() -> None:
    assert run("contains_all", "a b c", expected=["a", "c"]).passed is True
    assert run("contains_all", "a b c", expected=["a", "z"]).value == 0.5
    assert run("contains_all", "answer: 42", expected=42).passed is True  # JSON text of 42


def test_contains_all_without_any_reference_cannot_score() -> None:
    with pytest.raises(ScorerError, match="expected"):
        run("contains_all", "text", expected=None)
    with pytest.raises(ScorerError, match="no text output"):
        run({"type": "contains_all", "values": ["a"]}, None)


@pytest.mark.parametrize("values", ["paris", [], {"a": 1}])
def test_contains_all_refuses_values_that_are_not_a_list(values: Any) -> None:
    assert "values" in config_error({"type": "contains_all", "values": values})


def test_contains_any_needs_one_of_the_values() -> None:
    hit = run({"type": "contains_any", "values": ["rome", "PARIS"]}, "It is Paris.")
    assert (hit.value, hit.passed) == (1.0, True)
    assert "PARIS" in (hit.explanation or "")
    miss = run("contains_any", "It is Paris.", expected=["Rome", "Madrid"])
    assert (miss.value, miss.passed) == (0.0, False)
    assert "'Rome'" in (miss.explanation or "") and "'Madrid'" in (miss.explanation or "")
    assert "ignore_case" in config_error({"type": "contains_any", "ignore_case": "no"})


# --- starts_with ------------------------------------------------------------------------------

def test_starts_with_strips_and_is_case_sensitive_by_default() -> None:
    assert run({"type": "starts_with", "value": "Yes"}, "  Yes, it is.\n").passed is True
    assert run({"type": "starts_with", "value": "Yes"}, "yes, it is.").passed is False
    assert run({"type": "starts_with", "value": "Yes", "ignore_case": True}, "yes!").passed
    assert run({"type": "starts_with", "value": "Yes", "strip": False}, " Yes").passed is False


def test_starts_with_any_of_a_list_and_from_expected() -> None:
    assert run({"type": "starts_with", "value": ["No", "Yes"]}, "Yes.").passed is True
    verdict = run("starts_with", "Maybe.", expected=["No", "Yes"])
    assert verdict.passed is False
    assert "'No'" in (verdict.explanation or "")
    assert "value" in config_error({"type": "starts_with", "value": []})


# --- levenshtein / fuzzy ----------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "distance"), [
    ("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("abc", "abc", 0),
    ("flaw", "lawn", 2), ("abcXdef", "abcdef", 1), ("aaa", "aa", 1), ("ab", "ba", 2),
])
def test_levenshtein_distance(a: str, b: str, distance: int) -> None:
    assert levenshtein_distance(a, b) == distance


def test_levenshtein_similarity_against_the_threshold() -> None:
    verdict = run({"type": "levenshtein", "value": "sitting", "threshold": 0.5}, "kitten")
    assert verdict.value == pytest.approx(1 - 3 / 7)
    assert verdict.passed is True
    assert run({"type": "levenshtein", "value": "sitting", "threshold": 0.6},
               "kitten").passed is False


def test_levenshtein_takes_the_best_reference_and_ignores_case() -> None:
    verdict = run("levenshtein", "PARIS", expected=["London", "paris"])
    assert verdict.value == 1.0
    assert verdict.metadata is not None and verdict.metadata["reference"] == "paris"
    assert run({"type": "levenshtein", "value": "paris", "ignore_case": False},
               "PARIS").value == 0.0
    assert run({"type": "levenshtein", "value": ""}, "").value == 1.0


def test_levenshtein_refuses_very_long_texts() -> None:
    with pytest.raises(ScorerError, match="5,000"):
        run({"type": "levenshtein", "value": "short"}, "x" * 5001)
    assert run({"type": "levenshtein", "value": "x" * 5000}, "x" * 5000).value == 1.0


@pytest.mark.parametrize("name", ["levenshtein", "fuzzy"])
@pytest.mark.parametrize("threshold", [1.5, -0.1, "high", True])
def test_similarity_threshold_must_be_in_0_1(name: str, threshold: Any) -> None:
    assert "threshold" in config_error({"type": name, "threshold": threshold})


def test_fuzzy_uses_the_sequence_matcher_ratio() -> None:
    verdict = run({"type": "fuzzy", "value": "abce", "threshold": 0.7}, "ABCD")
    assert verdict.value == pytest.approx(0.75)  # 2 * 3 matching / 8 characters
    assert verdict.passed is True
    assert run({"type": "fuzzy", "value": "abce"}, "abcd").passed is False  # default 0.8
    assert run("fuzzy", "abcd", expected=["zzzz", "abcd"]).value == 1.0


# --- length -----------------------------------------------------------------------------------

def test_length_checks_characters_and_words() -> None:
    ok = run({"type": "length", "min_words": 2, "max_words": 3, "max_chars": 20}, " one two ")
    assert (ok.value, ok.passed) == (1.0, True)
    assert ok.metadata == {"chars": 7, "words": 2}
    long = run({"type": "length", "max_words": 3}, "one two three four")
    assert (long.value, long.passed) == (0.0, False)
    assert "4 words, more than 3" in (long.explanation or "")
    spaced = run({"type": "length", "max_words": 2}, "one   two\n")
    assert spaced.passed is True and spaced.metadata == {"chars": 9, "words": 2}
    short = run({"type": "length", "min_chars": 10}, "tiny")
    assert "4 characters, fewer than 10" in (short.explanation or "")


@pytest.mark.parametrize("params", [
    {}, {"min_chars": 5, "max_chars": 4}, {"min_words": -1}, {"max_words": 2.5},
    {"max_chars": True},
])
def test_length_bounds_are_checked_at_bind(params: dict[str, Any]) -> None:
    config_error({"type": "length", **params})


# --- latency / cost ---------------------------------------------------------------------------

def test_latency_against_the_threshold() -> None:
    spec = {"type": "latency", "threshold_ms": 500}
    assert run(spec, "x", latency_ms=499.6).passed is True
    slow = run(spec, "x", latency_ms=900.0)
    assert (slow.value, slow.passed) == (0.0, False)
    assert "900 ms > 500 ms" in (slow.explanation or "")
    with pytest.raises(ScorerError, match="latency"):
        run(spec, "x", latency_ms=None)
    assert "threshold_ms" in config_error({"type": "latency", "threshold_ms": -1})


def test_cost_against_the_budget() -> None:
    spec = {"type": "cost", "max_usd": 0.01}
    assert run(spec, "x", cost_usd=0.002).passed is True
    assert run(spec, "x", cost_usd=0.02).passed is False
    with pytest.raises(ScorerError, match="cost"):
        run(spec, "x", cost_usd=None)
    assert "max_usd" in config_error({"type": "cost", "max_usd": "cheap"})


# --- json_schema ------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age"],
}


def test_json_schema_refuses_an_invalid_schema_at_bind() -> None:
    message = config_error({"type": "json_schema", "schema": {"type": "nope"}})
    assert "json_schema" in message and "'nope'" in message and "$.type" in message
    assert "schema" in config_error({"type": "json_schema", "schema": ["not", "a", "schema"]})


def test_json_schema_passes_a_valid_document() -> None:
    verdict = run({"type": "json_schema", "schema": PERSON}, '{"name": "Ada", "age": 36}')
    assert (verdict.value, verdict.passed) == (1.0, True)


def test_json_schema_lists_three_errors_with_their_paths() -> None:
    output = json.dumps({"age": -1, "tags": [1, 2]})  # name missing, age < 0, two bad tags
    verdict = run({"type": "json_schema", "schema": PERSON}, output)
    assert (verdict.value, verdict.passed) == (0.0, False)
    text = verdict.explanation or ""
    assert text.startswith("4 schema violation(s)")
    assert "$.age" in text and "$.tags[0]" in text
    assert "(and 1 more)" in text and text.count("; ") == 2  # three listed
    assert verdict.metadata is not None and len(verdict.metadata["errors"]) == 4


def test_json_schema_output_that_is_not_json_scores_0() -> None:
    verdict = run({"type": "json_schema", "schema": PERSON}, "Sure! {name: Ada}")
    assert (verdict.value, verdict.passed) == (0.0, False)
    assert "not JSON" in (verdict.explanation or "")


def test_json_schema_follows_the_declared_draft() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "number",
              "maximum": 5, "exclusiveMaximum": True}  # a boolean here is draft-4 only
    assert run({"type": "json_schema", "schema": draft4}, "5").passed is False
    assert run({"type": "json_schema", "schema": draft4}, "4.5").passed is True
    config_error({"type": "json_schema", "schema": {k: v for k, v in draft4.items()
                                                     if k != "$schema"}})


def test_json_schema_unresolvable_ref_cannot_score() -> None:
    spec = {"type": "json_schema", "schema": {"$ref": "https://example.invalid/s.json"}}
    with pytest.raises(ScorerError, match=r"\$ref"):
        run(spec, "{}")


# --- json_field -------------------------------------------------------------------------------

DOC = json.dumps({"a": {"b": [{"c": 1.0}, {"c": "x"}]}, "items": [10, 20, 30], "ok": True})


@pytest.mark.parametrize(("path", "value"), [
    ("a.b[0].c", 1), ("a.b[1].c", "x"), ("items[2]", 30), ("items[-1]", 30), ("ok", True),
    ("a.b[1]", {"c": "x"}), ("items", [10, 20, 30.0]),
])
def test_json_field_equal_values(path: str, value: Any) -> None:
    verdict = run({"type": "json_field", "path": path, "value": value}, DOC)
    assert (verdict.value, verdict.passed) == (1.0, True)


@pytest.mark.parametrize(("path", "value"), [
    ("a.b[0].c", 2), ("a.b[0].c", "1"), ("ok", 1), ("items[0]", True), ("items", [10, 20]),
    ("a.b[1]", {"c": "x", "d": None}), ("a.b[1]", {}),
])
def test_json_field_unequal_values(path: str, value: Any) -> None:
    verdict = run({"type": "json_field", "path": path, "value": value}, DOC)
    assert (verdict.value, verdict.passed) == (0.0, False)
    assert "expected" in (verdict.explanation or "")


@pytest.mark.parametrize("path", ["a.b[2].c", "items[3]", "a.x", "items.0", "ok[0]"])
def test_json_field_missing_path_scores_0(path: str) -> None:
    verdict = run({"type": "json_field", "path": path, "value": 1}, DOC)
    assert verdict.value == 0.0
    assert "no field at path" in (verdict.explanation or "")


def test_json_field_from_expected_and_top_level_index() -> None:
    assert run({"type": "json_field", "path": "[1].id"}, '[{"id": 1}, {"id": 2}]',
               expected=2).passed is True
    with pytest.raises(ScorerError, match="expected"):
        run({"type": "json_field", "path": "a"}, '{"a": 1}', expected=None)


def test_json_field_output_not_json_scores_0() -> None:
    verdict = run({"type": "json_field", "path": "a", "value": 1}, "a = 1")
    assert verdict.value == 0.0 and "not JSON" in (verdict.explanation or "")


@pytest.mark.parametrize("path", ["", "a..b", "a[x]", "a[1", ".a", "a.", "a[]", 3])
def test_json_field_path_syntax_is_checked_at_bind(path: Any) -> None:
    assert "path" in config_error({"type": "json_field", "path": path, "value": 1})


# --- numeric ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("output", "expected"), [
    ("42", 42), (" 42\n", "42"), ("The total is 1,234.5 dollars.", "1234.5"),
    ("-3.2e2", -320), ("x = -0.5", -0.5), ("0.30000000000000004", 0.3), ("Answer: .5", 0.5),
    ("1,000,000", 1e6), ("45%", 45),
])
def test_numeric_reads_the_number(output: str, expected: Any) -> None:
    verdict = run("numeric", output, expected=expected)
    assert (verdict.value, verdict.passed) == (1.0, True), verdict.explanation


def test_numeric_a_hyphen_inside_a_word_is_not_a_minus_sign() -> None:
    assert parse_number("COVID-19 cases", anywhere=True) == 19
    assert parse_number("x = -19", anywhere=True) == -19
    assert parse_number("1,234 and 5", anywhere=False) is None  # not the whole text


def test_numeric_takes_the_last_number_by_default_and_shows_both() -> None:
    # Issue 13: a chain-of-thought answer ends with its number; position="first" is the old way.
    assert run({"type": "numeric", "value": 7}, "Between 3 and 7").passed is True
    verdict = run({"type": "numeric", "value": 7, "position": "first"}, "Between 3 and 7")
    assert verdict.passed is False
    assert "output 3 (first of 2 numbers) vs expected 7" in (verdict.explanation or "")
    assert verdict.metadata == {"output_number": 3.0, "expected_number": 7.0}


def test_numeric_tolerances() -> None:
    assert run({"type": "numeric", "value": 3.14159}, "3.14").passed is False  # default 1e-9
    assert run({"type": "numeric", "value": 3.14159, "abs_tol": 0.01}, "3.14").passed is True
    assert run({"type": "numeric", "value": 100, "rel_tol": 0.1}, "109").passed is True
    # math.isclose: relative to the larger magnitude, so 111 is within 10% but 112 is not.
    assert run({"type": "numeric", "value": 100, "rel_tol": 0.1}, "111").passed is True
    assert run({"type": "numeric", "value": 100, "rel_tol": 0.1}, "112").passed is False


def test_numeric_without_a_number_in_the_output_scores_0() -> None:
    verdict = run({"type": "numeric", "value": 1}, "I don't know")
    assert verdict.value == 0.0 and "no number" in (verdict.explanation or "")


def test_numeric_expected_that_is_not_a_number_cannot_score() -> None:
    # A list is a list of acceptable numbers since issue 13: one that is not a number, or an
    # empty list, cannot score.
    for expected in ("about ten", True, [1, "two"], [], None):
        with pytest.raises(ScorerError):
            run("numeric", "10", expected=expected)


@pytest.mark.parametrize("params", [
    {"value": "ten"}, {"value": True}, {"abs_tol": -1}, {"rel_tol": "small"},
])
def test_numeric_parameters_are_checked_at_bind(params: dict[str, Any]) -> None:
    config_error({"type": "numeric", **params})


# --- tool_calls -------------------------------------------------------------------------------

STEEL = {"type": "tool_calls",
         "calls": {"weather": {"called": True}, "currency": {"called": False}}}


def test_tool_calls_steel_thread_form() -> None:
    ok = run(STEEL, "15 degrees", tool_calls=[call("weather", '{"city": "Paris"}')])
    assert (ok.value, ok.passed) == (1.0, True)
    bad = run(STEEL, "", tool_calls=[call("weather"), call("currency", {"amount": 10})])
    assert (bad.value, bad.passed) == (0.5, False)
    assert "currency not called" in (bad.explanation or "")
    assert "tools called: weather, currency" in (bad.explanation or "")


def test_tool_calls_no_calls_is_an_empty_list() -> None:
    verdict = run(STEEL, "I don't know", tool_calls=None)
    assert (verdict.value, verdict.passed) == (0.5, False)  # currency not called: satisfied
    assert "weather() called" in (verdict.explanation or "")
    assert "no tools called" in (verdict.explanation or "")


def test_tool_calls_arguments_subset_from_a_json_string() -> None:
    spec = {"type": "tool_calls",
            "expected": [{"name": "search", "arguments": {"q": "paris", "opts": {"lang": "fr"}}}]}
    match = '{"q": "paris", "limit": 5, "opts": {"lang": "fr", "safe": true}}'
    assert run(spec, "", tool_calls=[call("search", match)]).passed is True
    for args in ('{"q": "lyon", "opts": {"lang": "fr"}}', '{"q": "paris"}', '{"q": "par',
                 '["paris"]', ""):
        assert run(spec, "", tool_calls=[call("search", args)]).passed is False, args


def test_tool_calls_arguments_in_the_steel_thread_form_compare_json_values() -> None:
    spec = {"type": "tool_calls", "calls": {"add": {"called": True, "arguments": {"n": 1}}}}
    assert run(spec, "", tool_calls=[call("add", {"n": 1.0})]).passed is True
    assert run(spec, "", tool_calls=[call("add", {"n": True})]).passed is False
    assert run(spec, "", tool_calls=[call("add", {"n": "1"})]).passed is False


def test_tool_calls_empty_arguments_string_is_no_arguments() -> None:
    spec = {"type": "tool_calls", "expected": [{"name": "ping", "arguments": {}}]}
    assert run(spec, "", tool_calls=[call("ping", "")]).passed is True
    assert run(spec, "", tool_calls=[call("ping", "not json")]).passed is False


def test_tool_calls_order_sensitivity() -> None:
    expected = [{"name": "search"}, {"name": "book"}]
    calls = [call("book"), call("search")]
    assert run({"type": "tool_calls", "expected": expected}, "", tool_calls=calls).passed
    ordered = run({"type": "tool_calls", "expected": expected, "order_sensitive": True}, "",
                  tool_calls=calls)
    assert (ordered.value, ordered.passed) == (0.5, False)
    assert "in order" in (ordered.explanation or "")
    interleaved = [call("search"), call("weather"), call("book")]
    assert run({"type": "tool_calls", "expected": expected, "order_sensitive": True}, "",
               tool_calls=interleaved).passed is True  # a subsequence


def test_tool_calls_order_partial_credit_is_the_longest_in_order_run() -> None:
    spec = {"type": "tool_calls", "expected": ["a", "b", "c"], "order_sensitive": True}
    verdict = run(spec, "", tool_calls=[call("b"), call("c"), call("a")])
    assert verdict.value == pytest.approx(2 / 3)
    assert verdict.metadata is not None
    assert verdict.metadata["failed"] == ["expected #1 a() in order"]


def test_tool_calls_each_expected_call_needs_its_own_call() -> None:
    twice = {"type": "tool_calls", "expected": ["search", "search"]}
    assert run(twice, "", tool_calls=[call("search")]).value == 0.5
    # The first expectation must not take the only call that the second one can use.
    spec = {"type": "tool_calls",
            "expected": [{"name": "s"}, {"name": "s", "arguments": {"q": "a"}}]}
    assert run(spec, "", tool_calls=[call("s", {"q": "a"}), call("s", {"q": "b"})]).passed


def test_tool_calls_allow_extra() -> None:
    spec = {"type": "tool_calls", "expected": [{"name": "search"}], "allow_extra": False}
    assert run(spec, "", tool_calls=[call("search"), call("search")]).passed is True
    verdict = run(spec, "", tool_calls=[call("search"), call("delete_all")])
    assert (verdict.value, verdict.passed) == (0.5, False)
    assert "also called delete_all" in (verdict.explanation or "")
    lenient = {"type": "tool_calls", "expected": [{"name": "search"}]}
    assert run(lenient, "", tool_calls=[call("search"), call("delete_all")]).passed is True


def test_tool_calls_a_call_without_a_name_cannot_score() -> None:
    with pytest.raises(ScorerError, match="tool name"):
        run(STEEL, "", tool_calls=[{"arguments": "{}"}])


@pytest.mark.parametrize("params", [
    {}, {"calls": {}}, {"calls": {"search": True}}, {"calls": {"search": {"called": "yes"}}},
    {"calls": {"search": {"called": False, "arguments": {"q": "x"}}}},
    {"calls": {"search": {"called": True, "args": {}}}}, {"expected": []},
    {"expected": [{"arguments": {}}]}, {"expected": [{"name": "s", "arguments": "q=x"}]},
    {"expected": "search"}, {"expected": ["s"], "order_sensitive": "yes"},
])
def test_tool_calls_parameters_are_checked_at_bind(params: dict[str, Any]) -> None:
    config_error({"type": "tool_calls", **params})


# --- outcome / step_count ---------------------------------------------------------------------

def test_outcome() -> None:
    assert run("outcome", "", outcome="complete").passed is True
    failed = run("outcome", "", outcome="FAILED")
    assert (failed.value, failed.passed) == (0.0, False)
    assert "'FAILED'" in (failed.explanation or "") and "COMPLETE" in (failed.explanation or "")
    assert run({"type": "outcome", "value": "failed"}, "", outcome="FAILED").passed is True
    with pytest.raises(ScorerError, match="outcome"):
        run("outcome", "", outcome=None)
    config_error({"type": "outcome", "value": ""})
    config_error({"type": "outcome", "value": 1})


def test_step_count() -> None:
    spec = {"type": "step_count", "min_steps": 2, "max_steps": 3}
    assert run(spec, "", steps=["plan", "act"]).passed is True
    assert run(spec, "", steps=["a", "b", "c", "d"]).passed is False
    assert run(spec, "", steps=[]).passed is False
    assert run({"type": "step_count", "max_steps": 1}, "", steps=[]).passed is True
    verdict = run({"type": "step_count", "min_steps": 2}, "", steps=["a"])
    assert "1 steps, not >= 2" in (verdict.explanation or "")
    with pytest.raises(ScorerError, match="steps"):
        run(spec, "", steps=None)


@pytest.mark.parametrize("params", [{}, {"min_steps": 3, "max_steps": 2}, {"max_steps": -1},
                                    {"min_steps": "2"}])
def test_step_count_bounds_are_checked_at_bind(params: dict[str, Any]) -> None:
    config_error({"type": "step_count", **params})


def test_lookup_lists_the_parameters() -> None:
    assert set(lookup("tool_calls").parameters()) == {"calls", "expected", "order_sensitive",
                                                      "allow_extra"}
    assert set(lookup("numeric").parameters()) == {"value", "abs_tol", "rel_tol", "position"}
