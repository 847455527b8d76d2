"""Issue 13, points 10, 11 and 13: scorers that agree with promptfoo and Inspect AI.

Expected values are worked out by hand (shown in the comments); cases marked "Inspect" or
"promptfoo" restate a case of that tool's documentation or test suite, computed here
independently."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from workers.errors import ScorerConfigError, ScorerError, UnknownScorer
from workers.scorers import Sample, ScoreValue, known_scorers, lookup, rebind, resolve_scorers
from workers.scorers.registry import bind_from_data, negate
from workers.scorers.structured import FORMAT_CHECKS, json_in_text, numbers_in
from workers.scorers.text import (
    bounded_distance,
    levenshtein_distance,
    rouge_n_scores,
    squad_tokens,
    token_f1_score,
)


def run(spec: str | dict[str, Any], output: str | None = "", expected: Any = None) -> ScoreValue:
    (scorer,) = resolve_scorers([spec])
    verdict = scorer.fn(Sample(input="q", expected=expected, output=output))
    assert isinstance(verdict, ScoreValue)
    return verdict


def refused(spec: dict[str, Any]) -> str:
    with pytest.raises(ScorerConfigError) as info:
        resolve_scorers([spec])
    return str(info.value)


# --- 10. numeric ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "numbers"), [
    ("42abc", []),                       # glued to letters: not a number
    ("H2O has 3 atoms", [3.0]),          # the 2 of H2O is part of a word
    ("\u22125", [-5.0]),                 # U+2212 MINUS SIGN
    ("\uff0d5 and \ufe635", [-5.0, -5.0]),  # full-width and small hyphen-minus
    ("version 1.2.3", []),               # a dotted version is no number
    ("The answer is 42.", [42.0]),       # a full stop after it is fine
    ("COVID-19 cases", [19.0]),          # a hyphen inside a word is no minus sign
    ("5-3", [5.0, 3.0]),
    ("**60**", [60.0]),
    ("10km", []),
    ("1e999 or 2", [2.0]),               # an overflow is no number
    ("$1,234.50", [1234.5]),
])
def test_numbers_are_whole_tokens(text: str, numbers: list[float]) -> None:
    assert numbers_in(text) == numbers


def test_numeric_examples_of_the_issue() -> None:
    assert run({"type": "numeric", "value": 42}, "42abc").passed is False
    assert run({"type": "numeric", "value": 3}, "H2O has 3 atoms").passed is True
    verdict = run({"type": "numeric", "value": -5}, "\u22125")
    assert verdict.passed is True and verdict.metadata == {"output_number": -5.0,
                                                           "expected_number": -5.0}
    assert run({"type": "numeric", "value": 5}, "\u22125").passed is False


@pytest.mark.parametrize(("output", "target", "position", "passed"), [
    # Inspect match(numeric=True), location "end" (its default, as ours "last")
    ("28 + 32 = 60\nThis solves the problem.", "60", "last", True),
    ("**ANSWER: 28 + 32 = 60**\nThis solves the problem.", "60", "last", True),
    ("The answer is 25", "5", "last", False),
    ("the value is 110", "10", "last", False),
    ("the result is -5 exactly", "-5", "last", True),
    ("5", "-5", "last", False),
    ("pi is approximately 33.14", "3.14", "last", False),
    ("the value is 1000", "1e3", "last", True),
    ("result: -5.0", "-5", "last", True),
    ("answer: \u22125", "-5", "last", True),
    ("The answer is 42!", "42", "last", True),
    ("The answer is (42).", "42", "last", True),
    ("The answer is [42]", "42", "last", True),
    ("The answer is 42abc", "42", "last", False),
    # location "begin" is the first number; "any" any of them
    ("50 is the answer", "5", "first", False),
    ("got 25 here", "5", "any", False),
    ("first 7 then 25 then done", "25", "any", True),
    ("first (7) then 25! then done", "25", "any", True),
    ("got 7 and 11", "25", "any", False),
])
def test_numeric_agrees_with_inspect_match(output: str, target: str, position: str,
                                           passed: bool) -> None:
    verdict = run({"type": "numeric", "value": target, "position": position}, output)
    assert verdict.passed is passed, verdict.explanation


def test_numeric_any_reports_the_matching_number() -> None:
    verdict = run({"type": "numeric", "value": 25, "position": "any"},
                  "first 7 then 25 then done")
    assert verdict.metadata == {"output_number": 25.0, "expected_number": 25.0,
                                "numbers_found": 2}


def test_numeric_several_acceptable_targets() -> None:
    with pytest.raises(ScorerError, match="not a number"):  # "1/2" is not a number
        run("numeric", "It is 0.5", expected=[0.5, "1/2", 50])
    assert run("numeric", "It is 0.5", expected=[0.5, 50]).passed is True
    assert run("numeric", "It is 50", expected=[0.5, 50]).passed is True
    verdict = run({"type": "numeric", "value": [10, 20]}, "maybe 15")
    assert verdict.passed is False and "10 or 20" in (verdict.explanation or "")


def test_numeric_bad_parameters_are_refused() -> None:
    assert "position" in refused({"type": "numeric", "value": 1, "position": "end"})
    refused({"type": "numeric", "value": []})
    refused({"type": "numeric", "value": [1, "x"]})


# --- 11. exact_match with a JSON object or list ----------------------------------------------

def test_exact_match_compares_json_structures() -> None:
    expected = {"b": 2, "a": [1, {"c": None}]}
    assert run("exact_match", '{"a":[1,{"c":null}],"b":2}', expected=expected).passed is True
    assert run("exact_match", '{"b": 2,\n "a": [1, {"c": null}]}', expected=expected).passed
    assert run("exact_match", '{"b": 2, "a": [{"c": null}, 1]}', expected=expected).passed \
        is False  # list order matters
    assert run("exact_match", '{"b": 2.0, "a": [1, {"c": null}]}', expected=expected).passed
    assert run("exact_match", '{"b": "2", "a": [1, {"c": null}]}', expected=expected).passed \
        is False  # "2" is not 2
    assert run("exact_match", "not json", expected=expected).passed is False


def test_exact_match_json_list_is_given_as_one_alternative() -> None:
    # A list expected means "any of these", so the JSON list [1, 2] is written [[1, 2]].
    assert run("exact_match", "[1,2]", expected=[[1, 2]]).passed is True
    assert run("exact_match", "[2, 1]", expected=[[1, 2]]).passed is False
    assert run("exact_match", "2", expected=[1, 2]).passed is True  # strings as before
    assert run({"type": "exact_match", "value": [{"x": 1}, "none"]}, "NONE").passed is True


# --- 13. token_f1 (Inspect f1, SQuAD) ---------------------------------------------------------

@pytest.mark.parametrize(("output", "targets", "f1"), [
    ("foo", ["foo"], 1.0),                       # Inspect test_f1_basic_match
    ("foo1", ["foo"], 0.0),                      # Inspect test_f1_basic_nonmatch
    ("Paris", ["Paris, Texas", "Paris"], 1.0),   # Inspect test_f1_good_match: best target
    ("Paris", ["Paris, Texas"], 2 / 3),          # P=1, R=1/2: 2*(1/2)/(3/2) (Inspect 0.67)
    ("(3.14)", ["3.14"], 1.0),                   # "314" both
    ("The answer is 3.14.", ["3.14"], 0.5),      # [answer, is, 314] vs [314]: P=1/3, R=1
    ("The cat", ["a cat!"], 1.0),                # articles and punctuation go
    ("cat cat dog", ["cat dog dog"], 2 / 3),     # multisets: shared cat, dog = 2 of 3 each
])
def test_token_f1(output: str, targets: list[str], f1: float) -> None:
    verdict = run("token_f1", output, expected=targets)
    assert verdict.value == pytest.approx(f1)
    assert verdict.passed is (f1 == 1.0)


def test_token_f1_normalisation_and_edges() -> None:
    assert squad_tokens("The  Eiffel-Tower, in «Paris»!") == ["eiffeltower", "in", "paris"]
    assert token_f1_score([], []) == 1.0
    assert token_f1_score(["a"], []) == 0.0
    assert run({"type": "token_f1", "threshold": 0.6}, "Paris", expected="Paris, Texas").passed


# --- 13. rouge_n (promptfoo rouge-n) ----------------------------------------------------------

def test_rouge_n_hand_worked() -> None:
    cand, ref = "the cat sat on the mat", "the cat is on the mat"
    # unigrams: ref {the:2, cat, is, on, mat} = 6, shared the:2 cat on mat = 5 -> R = P = 5/6
    one = rouge_n_scores(cand, ref, 1)
    assert one == pytest.approx({"recall": 5 / 6, "precision": 5 / 6, "f1": 5 / 6})
    # bigrams: ref the-cat cat-is is-on on-the the-mat; shared the-cat on-the the-mat = 3/5
    two = rouge_n_scores(cand, ref, 2)
    assert two == pytest.approx({"recall": 0.6, "precision": 0.6, "f1": 0.6})
    # recall vs precision: "hello" against "hello world": R = 1/2, P = 1, F = 2/3
    assert rouge_n_scores("hello", "hello world", 1) == pytest.approx(
        {"recall": 0.5, "precision": 1.0, "f1": 2 / 3})


def test_rouge_n_scorer() -> None:
    # promptfoo: rouge-n against "hello world", default threshold 0.75, case-insensitive
    assert run({"type": "rouge_n", "value": "hello world"}, "Hello, World!").passed is True
    verdict = run({"type": "rouge_n", "value": "hello world"}, "hello there")
    assert verdict.value == 0.5 and verdict.passed is False
    assert run({"type": "rouge_n", "value": "hello world", "measure": "precision"},
               "hello").value == 1.0
    # bigrams of "a b c": a-b, b-c. "b c d" has b-c, c-d: recall 1/2; "b c" has b-c: 1
    assert run({"type": "rouge_n", "n": 2}, "a b c", expected=["x y", "b c d"]).value == 0.5
    assert run({"type": "rouge_n", "n": 2}, "a b c", expected=["b c d", "b c"]).value == 1.0
    with pytest.raises(ScorerError, match="fewer than 2 words"):
        run({"type": "rouge_n", "n": 2}, "hello", expected="hello")
    refused({"type": "rouge_n", "n": 0})
    refused({"type": "rouge_n", "measure": "f2"})


# --- 13. edit_distance (promptfoo levenshtein) ------------------------------------------------

def test_edit_distance_is_promptfoos_levenshtein() -> None:
    # promptfoo: kitten -> sitting is 3 edits; threshold (our max_distance) defaults to 5
    assert run({"type": "edit_distance", "value": "sitting"}, "kitten").passed is True
    verdict = run({"type": "edit_distance", "value": "sitting", "max_distance": 2}, "kitten")
    assert verdict.value == 0.0 and verdict.passed is False
    hit = run({"type": "edit_distance", "value": "sitting", "max_distance": 3}, "kitten")
    assert hit.value == 1.0 and hit.metadata == {"distance": 3, "reference": "sitting"}
    # case-sensitive by default, as promptfoo: "Hello World" is 2 edits from "hello world"
    assert run({"type": "edit_distance", "max_distance": 1}, "Hello World",
               expected="hello world").passed is False
    assert run({"type": "edit_distance", "max_distance": 0, "ignore_case": True},
               "Hello World", expected="hello world").passed is True


def test_edit_distance_compares_long_texts_within_a_band() -> None:
    text = "lorem ipsum " * 20_000  # 240,000 characters: too long for levenshtein
    verdict = run({"type": "edit_distance", "value": text + "!", "max_distance": 2}, text)
    assert verdict.passed is True and verdict.metadata == {"distance": 1,
                                                           "reference": text + "!"}


def test_bounded_distance_agrees_with_the_full_programme() -> None:
    rng = random.Random(13)
    for _ in range(3000):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 10)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 10)))
        limit = rng.randint(0, 8)
        full = levenshtein_distance(a, b)
        assert bounded_distance(a, b, limit) == (full if full <= limit else None)


def test_levenshtein_says_it_is_a_similarity() -> None:
    assert "edit_distance" in lookup("levenshtein").description
    message = refused({"type": "levenshtein", "threshold": 5})
    assert "edit_distance" in message and "max_distance" in message


# --- 13. regex_extract (Inspect pattern) ------------------------------------------------------

@pytest.mark.parametrize(("pattern", "output", "target", "match_all", "passed"), [
    ("(foo)", "foo", "foo", False, True),                       # Inspect test_single_match_success
    ("(foo)", "foo", "target doesn't match", False, False),
    ("(foo)", "model doesn't match", "foo", False, False),
    ("(FOO)", "foo", "foo", False, True),                       # ignore_case by default
    ("(foo) (bar)", "foo bar", "foo", False, True),
    ("(foo) (bar)", "foo bar", "bar", False, True),
    ("(foo) (foo)", "foo foo", "foo", True, True),
    ("(foo|bar) (foo|bar)", "foo bar", "bar", True, False),
    ("(f[oz]o) (b[az]r)", "foo bzr", "bar", False, False),
])
def test_regex_extract_agrees_with_inspect_pattern(pattern: str, output: str, target: str,
                                                   match_all: bool, passed: bool) -> None:
    spec = {"type": "regex_extract", "pattern": pattern, "match_all": match_all}
    assert run(spec, output, expected=target).passed is passed


def test_regex_extract_details() -> None:
    verdict = run({"type": "regex_extract", "pattern": r"ANSWER:\s*(\w)"},
                  "I think... ANSWER: C", expected=["B", "C"])
    assert verdict.passed is True and verdict.metadata == {"captured": ["C"]}
    miss = run({"type": "regex_extract", "pattern": r"ANSWER:\s*(\w)", "ignore_case": False},
               "answer: c", expected="c")
    assert miss.passed is False and "no match" in (miss.explanation or "")
    assert "capture group" in refused({"type": "regex_extract", "pattern": r"\d+"})
    refused({"type": "regex_extract", "pattern": "(unclosed"})


# --- 13. contains_json (promptfoo contains-json) ----------------------------------------------

LAT_LONG = {"type": "object", "required": ["latitude", "longitude"],
            "properties": {"latitude": {"type": "number", "minimum": -90, "maximum": 90},
                           "longitude": {"type": "number", "minimum": -180, "maximum": 180}}}


def test_json_in_text_finds_whole_fenced_and_prose_json() -> None:
    assert json_in_text('[1, 2]') == [[1, 2]]
    assert json_in_text('Here:\n```json\n{"a": 1}\n```\nand {"b": {"c": 2}} and {bad') == [
        {"a": 1}, {"b": {"c": 2}}]
    assert json_in_text("Sure, the array:\n```\n[1, 2]\n```") == [[1, 2]]
    assert json_in_text("see [1] and {not json}") == []
    assert json_in_text("{" * 50_000) == []  # bounded work


def test_contains_json_with_and_without_schema() -> None:
    prose = 'The place is {"latitude": 48.85, "longitude": 2.35}, in France.'
    assert run("contains_json", prose).passed is True
    assert run("contains_json", "no JSON here").passed is False
    assert run({"type": "contains_json", "schema": LAT_LONG}, prose).passed is True
    wrong = 'First {"latitude": 123, "longitude": 2} then {"name": "x"}'
    verdict = run({"type": "contains_json", "schema": LAT_LONG}, wrong)
    assert verdict.passed is False and "maximum" in (verdict.explanation or "")
    second = 'First {"name": "x"} then ```json\n{"latitude": 1, "longitude": 2}\n```'
    assert run({"type": "contains_json", "schema": LAT_LONG}, second).passed is True
    refused({"type": "contains_json", "schema": {"type": "nope"}})


# --- 13. JSON Schema format -------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "good", "bad"), [
    ("date", "2024-02-29", ["2023-02-29", "2024-2-1", "2024-02-29T00:00:00Z"]),
    ("date-time", "2024-02-29T13:05:00.5+01:00", ["2024-02-29 13:05", "2024-02-29T25:00:00Z",
                                                  "2024-02-29T13:05:00"]),
    ("time", "23:59:60Z", ["24:00:00Z", "12:00"]),
    ("duration", "P1Y2M3DT4H5M6S", ["P", "PT", "P1W2D", "1D"]),
    ("email", "ada.lovelace@example.org", ["ada@", "@example.org", "ada lovelace@x.org",
                                           "a..b@x.org"]),
    ("hostname", "api.example.com", ["-bad.example.com", "a" * 64 + ".com", "under_score.com"]),
    ("ipv4", "192.168.0.1", ["256.1.1.1", "1.2.3", "01.2.3.4"]),
    ("ipv6", "2001:db8::1", ["2001:db8::g", "fe80::1%eth0"]),
    ("uri", "https://example.com/a?b=c#d", ["example.com", "https://exa mple.com", "http://%zz"]),
    ("uuid", "123e4567-e89b-12d3-a456-426614174000", ["123e4567e89b12d3a456426614174000"]),
    ("json-pointer", "/a/b~1c", ["a/b", "/a~2"]),
    ("regex", "^a+$", ["(unclosed"]),
])
def test_json_schema_checks_formats(fmt: str, good: str, bad: list[str]) -> None:
    spec = {"type": "json_schema", "schema": {"type": "string", "format": fmt}}
    assert run(spec, json.dumps(good)).passed is True, good
    for value in bad:
        assert run(spec, json.dumps(value)).passed is False, value
    off = {**spec, "formats": False}
    assert all(run(off, json.dumps(value)).passed for value in bad)


def test_unchecked_formats_are_said_and_other_types_pass() -> None:
    spec = {"type": "json_schema", "schema": {"properties": {
        "n": {"type": "integer", "format": "int32"}, "d": {"format": "date"}}}}
    verdict = run(spec, '{"n": 5, "d": 7}')  # a format applies to strings only
    assert verdict.passed is True
    assert verdict.metadata == {"unchecked_formats": ["int32"]}
    assert "int32" in (verdict.explanation or "")
    assert {"date", "date-time", "email", "uri", "ipv4", "uuid"} <= set(FORMAT_CHECKS)


# --- 13. not-* (promptfoo negation) -----------------------------------------------------------

def test_not_inverts_value_and_verdict() -> None:
    verdict = run({"type": "not-contains", "value": "sorry"}, "Here you are.")
    assert (verdict.value, verdict.passed) == (1.0, True)
    assert run({"type": "not-contains", "value": "sorry"}, "Sorry, no.").passed is False
    partial = run({"type": "not-contains_all", "values": ["a", "b", "c", "d"]}, "a b c")
    assert partial.value == pytest.approx(0.25) and partial.passed is True
    # promptfoo: not-rouge-n passes below the threshold, its score is 1 - score
    below = run({"type": "not-rouge_n", "value": "hello world"}, "hello there")
    assert (below.value, below.passed) == (0.5, True)
    assert below.metadata and below.metadata["negated"] == {"value": 0.5, "passed": False}
    assert run("not-not-exact_match", "Paris", expected="paris").passed is True


def test_not_keeps_could_not_score() -> None:
    with pytest.raises(ScorerError):
        run("not-contains", "anything", expected=None)
    with pytest.raises(ScorerError):
        run("not-numeric", "5", expected="five")


def test_not_is_a_name_an_assertion_type_and_a_stored_spec() -> None:
    (scorer,) = resolve_scorers([{"type": "not-regex", "pattern": "^\\d+$"}])
    assert scorer.name == "not-regex" and scorer.version == "1-not1"
    assert scorer.needs_expected is False
    again = rebind(json.loads(json.dumps(scorer.spec())))
    verdict = again.fn(Sample(input="q", expected=None, output="abc"))
    assert isinstance(verdict, ScoreValue) and verdict.passed is True
    data = bind_from_data({"type": "not-contains", "value": "x"}, "assert:not-contains")
    assert data.needs_expected is False and set(lookup("not-contains").parameters()) == {
        "value", "ignore_case"}
    assert resolve_scorers(["not-contains"])[0].needs_expected is True
    assert lookup("not-numeric").version == "2-not1"


def test_not_refuses_what_the_scorer_refuses() -> None:
    with pytest.raises(UnknownScorer):
        resolve_scorers(["not-nosuch"])
    with pytest.raises(UnknownScorer, match="import path"):
        bind_from_data({"type": "not-os:system"}, "assert:x")
    refused({"type": "not-regex", "pattern": "(unclosed"})
    with pytest.raises(ScorerConfigError, match="api_base"):
        bind_from_data({"type": "not-llm_rubric", "criteria": "x", "api_base": "http://h"}, "a")


def test_not_is_listed_and_wraps_async_and_plain_scorers() -> None:
    assert "not-<scorer>" in known_scorers()

    async def judge(sample: Sample) -> ScoreValue:
        return ScoreValue(0.25, False, "meh", judge_model="m", judge_cost_usd=0.5)

    negated = negate(judge)
    pending: Any = negated(Sample(input="q", expected=None, output="o"))
    verdict: ScoreValue = asyncio.run(pending)
    assert (verdict.value, verdict.passed, verdict.judge_model, verdict.judge_cost_usd) == (
        0.75, True, "m", 0.5)
    plain = negate(lambda sample: 0.0)  # type: ignore[arg-type, return-value]
    result = plain(Sample(input="q", expected=None, output="o"))
    assert isinstance(result, ScoreValue) and (result.value, result.passed) == (1.0, True)
