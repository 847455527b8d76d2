"""Steel Thread test cases run unchanged and score as Steel Thread scores them (issue 13,
point 12).

What Steel Thread does was read in its evaluator, steelthread/evals/default_evaluator.py
(steel-thread 0.1.12 on PyPI), and its test case models (steelthread/evals/models.py):

- tool_calls, over `calls: {tool: {"called": bool}}`: R = tools with called true; "actual"
  = those of them called + tools with called false that were called; R == 0 and actual
  == 0 -> 1.0; R > 0 -> min(actual / R, 1); else 0.0. So `calls: {}` scores 1.0.
- latency: 1 - |threshold - latency| / max(|threshold|, |latency|, 1e-8).
- final_output: exact_match is `str(output) == str(value)`, partial_match `value in
  output`: raw strings.

Every expected value below is worked out by hand from those formulas. Steel Thread has
scores only; `passed` is ours (all required tools called and no forbidden one; latency
within the threshold; the output matches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.experiments.dataset_file import load_dataset_file
from workers.errors import ScorerConfigError, ScorerError
from workers.scorers import Sample, ScoreValue, known_scorers, resolve_scorers
from workers.scorers.steel_thread import STEEL_THREAD_TYPES
from workers.scoring import assertion_scorers

WEATHER = {"weather": {"called": True}, "currency": {"called": False}}


def run(spec: dict[str, Any], output: str | None = "", **fields: Any) -> ScoreValue:
    (scorer,) = resolve_scorers([spec])
    verdict = scorer.fn(Sample(input="q", expected=None, output=output, **fields))
    assert isinstance(verdict, ScoreValue)
    return verdict


def calls(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "arguments": {}} for n in names]


# --- tool_calls -------------------------------------------------------------------------


@pytest.mark.parametrize(("rules", "made", "value", "passed"), [
    # calls: {} -> R = 0, actual = 0 -> 1.0, whatever was called (refused by our tool_calls)
    ({}, [], 1.0, True),
    ({}, ["search"], 1.0, True),
    # one required tool: 1/1 or 0/1
    ({"weather": {"called": True}}, ["weather"], 1.0, True),
    ({"weather": {"called": True}}, [], 0.0, False),
    ({"weather": {"called": True}}, ["weather", "weather"], 1.0, True),  # counted once
    # two required, one called: 1/2
    ({"weather": {"called": True}, "search": {"called": True}}, ["weather"], 0.5, False),
    # only forbidden tools: 1.0 when none was called, else 0.0 (ours would say 1/2)
    ({"currency": {"called": False}}, [], 1.0, True),
    ({"currency": {"called": False}}, ["currency"], 0.0, False),
    ({"weather": {"called": False}, "currency": {"called": False}}, ["currency"], 0.0, False),
    # the shipped case: weather required, currency forbidden
    (WEATHER, ["weather"], 1.0, True),
    (WEATHER, [], 0.0, False),
    (WEATHER, ["weather", "currency"], 1.0, False),  # actual 2, R 1 -> min(2/1, 1)
    # a called forbidden tool counts towards R in Steel Thread: actual 0 + 1 = 1 of R 1
    (WEATHER, ["currency"], 1.0, False),
    # R 3: weather called, search and maps not, currency (forbidden) called: (1 + 1)/3
    ({"weather": {"called": True}, "search": {"called": True}, "maps": {"called": True},
      "currency": {"called": False}}, ["weather", "currency"], 2 / 3, False),
])
def test_tool_calls_score_as_steel_thread(rules: dict[str, Any], made: list[str],
                                          value: float, passed: bool) -> None:
    verdict = run({"type": "steel_thread_tool_calls", "calls": rules}, tool_calls=calls(*made))
    assert verdict.value == pytest.approx(value) and verdict.passed is passed
    assert verdict.metadata is not None and verdict.metadata["called"] == made


def test_a_called_forbidden_tool_is_named_in_the_explanation() -> None:
    verdict = run({"type": "steel_thread_tool_calls", "calls": WEATHER},
                  tool_calls=calls("currency"))
    text = verdict.explanation or ""
    assert "not called: weather" in text and "must not be called but was: currency" in text
    assert "Steel Thread's score counts it" in text
    assert verdict.metadata == {"missing": ["weather"], "forbidden_called": ["currency"],
                                "called": ["currency"]}


def test_our_tool_calls_still_refuses_an_empty_calls_object() -> None:
    with pytest.raises(ScorerConfigError, match="calls must be an object like"):
        resolve_scorers([{"type": "tool_calls", "calls": {}}])
    with pytest.raises(ScorerConfigError, match="calls must be an object like"):
        resolve_scorers([{"type": "steel_thread_tool_calls", "calls": []}])


# --- latency ------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "latency", "value", "passed"), [
    (5000, 5000, 1.0, True),     # 1 - 0/5000
    (5000, 2500, 0.5, True),     # 1 - 2500/5000
    (5000, 1000, 0.2, True),     # 1 - 4000/5000: faster than the threshold scores lower
    (5000, 0, 0.0, True),        # 1 - 5000/5000
    (5000, 10000, 0.5, False),   # 1 - 5000/10000
    (5000, 20000, 0.25, False),  # 1 - 15000/20000
    (1000, 1250, 0.8, False),    # 1 - 250/1250
    (0, 0, 1.0, True),           # 1 - 0/1e-8
])
def test_latency_scores_as_steel_thread(threshold: float, latency: float, value: float,
                                        passed: bool) -> None:
    verdict = run({"type": "steel_thread_latency", "threshold_ms": threshold},
                  latency_ms=latency)
    assert verdict.value == pytest.approx(value) and verdict.passed is passed
    assert verdict.metadata == {"latency_ms": latency, "threshold_ms": threshold}


def test_latency_not_recorded_is_unscored_and_a_bad_threshold_refused() -> None:
    with pytest.raises(ScorerError, match="not recorded"):
        run({"type": "steel_thread_latency", "threshold_ms": 100}, latency_ms=None)
    for bad in (-1, "fast", True):
        with pytest.raises(ScorerConfigError, match="threshold_ms"):
            resolve_scorers([{"type": "steel_thread_latency", "threshold_ms": bad}])


# --- final_output -------------------------------------------------------------------------

TOKYO = "It is 18 degrees in Tokyo."


@pytest.mark.parametrize(("output_type", "value", "output", "passed"), [
    ("exact_match", TOKYO, TOKYO, True),
    ("exact_match", TOKYO, TOKYO.lower(), False),        # case counts
    ("exact_match", TOKYO, TOKYO + "\n", False),         # so does whitespace
    ("exact_match", TOKYO, "It is 18 degrees  in Tokyo.", False),
    ("exact_match", "caf\u00e9", "cafe\u0301", False),   # no Unicode normalisation
    ("partial_match", "15 degrees", "It is 15 degrees in Paris.", True),
    ("partial_match", "15 degrees", "It is 15 Degrees in Paris.", False),
    ("partial_match", "15 degrees", "It is 15  degrees in Paris.", False),
    ("partial_match", "", "anything", True),             # "" in s
])
def test_final_output_compares_raw_strings(output_type: str, value: str, output: str,
                                           passed: bool) -> None:
    verdict = run({"type": "final_output", "output_type": output_type, "value": value},
                  output)
    assert (verdict.value, verdict.passed) == (float(passed), passed)


def test_final_output_versions_and_registration() -> None:
    known = known_scorers()
    assert known["final_output"].version == "2"  # exact_match no longer normalises
    assert known["steel_thread_tool_calls"].version == "1"
    assert known["steel_thread_latency"].version == "1"
    assert set(STEEL_THREAD_TYPES.values()) <= set(known)


# --- a whole Steel Thread line -------------------------------------------------------------

LINE = {"dataset": "weather", "testcase": "paris", "test_case_name": "Weather in Paris",
        "run": "seed-run-1",
        "input_config": {"type": "query", "value": "What is the weather in Paris?",
                         "tools": ["weather"]},
        "assertions": [
            {"type": "outcome", "value": "COMPLETE"},
            {"type": "final_output", "output_type": "exact_match",
             "value": "It is 15 degrees in Paris."},
            {"type": "tool_calls", "calls": {}},
            {"type": "tool_calls", "calls": WEATHER},
            {"type": "latency", "threshold_ms": 4000},
            {"type": "custom", "value": {"max_words": "8"}}]}
OURS = {"id": "ours", "input": "q", "assertions": [
    {"type": "tool_calls", "calls": WEATHER}, {"type": "latency", "threshold_ms": 4000}]}


def test_a_steel_thread_line_runs_unchanged_with_steel_thread_scores(tmp_path: Path) -> None:
    path = tmp_path / "st.jsonl"
    path.write_text(json.dumps(LINE) + "\n" + json.dumps(OURS) + "\n")
    paris, ours = load_dataset_file(path, max_line_bytes=1 << 20).items
    assert [a["type"] for a in paris["assertions"]] == [
        "outcome", "final_output", "steel_thread_tool_calls", "steel_thread_tool_calls",
        "steel_thread_latency", "custom"]
    assert paris["assertions"][3]["calls"] == WEATHER  # only the type is renamed
    assert [a["type"] for a in ours["assertions"]] == ["tool_calls", "latency"]

    sample = Sample(input=paris["input"], expected=None, output="It is 15 degrees in Paris.",
                    tool_calls=calls("weather", "currency"), latency_ms=1000.0,
                    outcome="COMPLETE")
    verdicts = {}
    for scorer in assertion_scorers(paris["assertions"]):
        verdict = scorer.fn(sample)
        assert isinstance(verdict, ScoreValue)
        verdicts[scorer.label] = (verdict.value, verdict.passed)
    assert verdicts == {
        "assert:outcome": (1.0, True),
        "assert:final_output": (1.0, True),
        "assert:steel_thread_tool_calls": (1.0, True),       # calls: {}
        "assert:steel_thread_tool_calls#2": (1.0, False),    # min((1 + 1)/1, 1); currency called
        "assert:steel_thread_latency": (pytest.approx(0.25), True),  # 1 - 3000/4000
    }
    ours_verdicts = [s.fn(sample) for s in assertion_scorers(ours["assertions"])]
    assert [(v.value, v.passed) for v in ours_verdicts if isinstance(v, ScoreValue)] == [
        (0.5, False), (1.0, True)]  # our tool_calls: 1 of 2 checks; our latency: 0/1
