"""The CI gate (thresholds, missing scorers, unfinished runs, regressions) and the JUnit XML
of an experiment, on SQLite and PostgreSQL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from models.crud import record_item_outcome
from models.db import session_scope
from models.tables import ScoreBase
from scheduler.errors import InputError
from scheduler.reports.compare import compare_experiments
from scheduler.reports.experiment import build_report, experiment_report, load_items
from scheduler.reports.gate import evaluate_gate, parse_thresholds
from scheduler.reports.junit import write_junit
from tests.factories import make_experiment, result_in, score_in

SCORERS: list[dict[str, Any]] = [{"label": label, "type": label, "version": "1", "params": {}}
           for label in ("exact_match", "judge")]


def score(label: str, value: float | None, *, passed: bool | None = None,
          explanation: str = "ok", error: str | None = None) -> ScoreBase:
    return score_in(label, value, explanation=explanation, error=error,
                    passed=(value is not None and value >= 1.0) if passed is None else passed)


def record(experiment_id: int, outcomes: list[tuple[int, int, dict, list[ScoreBase]]]
           ) -> None:
    """Write (item id, repeat, result overrides, scores) with record_item_outcome."""
    with session_scope() as session:
        for item_id, repeat, overrides, scores in outcomes:
            ok = overrides.pop("ok", True)
            record_item_outcome(session=session, scores_in=scores, result_in=result_in(
                experiment_id, item_id, repeat, ok=ok, **{"latency_ms": 250.0, **overrides}))


def scored_run(values: dict[str, list[float]]) -> int:
    """A completed experiment on the "gate" dataset: item i gets values[label][i]."""
    n = len(next(iter(values.values())))
    exp, ids = make_experiment(n, name="gate", scorers=SCORERS)  # same dataset every time
    record(exp, [(item_id, 0, {}, [score(label, vs[i], passed=vs[i] >= 0.5)
                                   for label, vs in values.items()])
                 for i, item_id in enumerate(ids)])
    return exp


# --- parse_thresholds ------------------------------------------------------------------------


def test_parse_thresholds():
    assert parse_thresholds(["exact_match=0.9", " judge = 0.7", "x=1", "y=0"]) == {
        "exact_match": 0.9, "judge": 0.7, "x": 1.0, "y": 0.0}
    assert parse_thresholds([]) == {}


@pytest.mark.parametrize(("pair", "match"), [
    ("exact_match", "LABEL=VALUE"), ("=0.5", "LABEL=VALUE"), ("judge=high", "not a number"),
    ("judge=1.5", r"in \[0, 1\]"), ("judge=-0.1", r"in \[0, 1\]"), ("judge=nan", r"\[0, 1\]"),
])
def test_parse_thresholds_refuses_bad_pairs(pair: str, match: str):
    with pytest.raises(InputError, match=match) as info:
        parse_thresholds([pair])
    assert info.value.exit_code == 2


def test_parse_thresholds_refuses_a_label_given_twice():
    with pytest.raises(InputError, match="twice"):
        parse_thresholds(["judge=0.5", "judge=0.6"])


# --- evaluate_gate ---------------------------------------------------------------------------


def _report(mean: float, status: str = "completed") -> dict[str, Any]:
    return {"experiment_id": 7, "status": status, "scorers": {"exact_match": {"mean": mean}}}


def _comparison(verdicts: dict[str, tuple[str, float, float, float]]) -> dict[str, Any]:
    return {"baseline": {"id": 4}, "candidate": {"id": 7},
            "scorers": {label: {"verdict": v, "diff": d, "ci_low": lo, "ci_high": hi}
                        for label, (v, d, lo, hi) in verdicts.items()}}


def test_gate_lines_as_documented():
    steady = _comparison({"exact_match": ("no significant change", 0.01, -0.02, 0.04)})
    passed = evaluate_gate(_report(0.93), fail_under={"exact_match": 0.9}, comparison=steady,
                           fail_on_regression=True)
    assert passed.ok and passed.reasons == []
    assert passed.line == "GATE PASSED: exact_match 0.93 >= 0.90; no regression vs experiment 4"

    report = _report(0.71)
    report["scorers"]["judge"] = {"mean": 0.8}
    worse = _comparison({"judge": ("regressed", -0.12, -0.2, -0.05)})
    failed = evaluate_gate(report, fail_under={"exact_match": 0.9}, comparison=worse,
                           fail_on_regression=True)
    assert not failed.ok
    assert failed.reasons == ["exact_match 0.71 < 0.90",
                              "judge regressed by -0.12 [-0.20, -0.05] vs experiment 4"]
    assert failed.line == ("GATE FAILED: exact_match 0.71 < 0.90; judge regressed by -0.12 "
                           "[-0.20, -0.05] vs experiment 4")


def test_gate_regression_only_fails_when_asked():
    worse = _comparison({"judge": ("regressed", -0.12, -0.2, -0.05)})
    result = evaluate_gate(_report(0.95), fail_under={}, comparison=worse)
    assert result.ok
    assert result.line == ("GATE PASSED: judge regressed by -0.12 [-0.20, -0.05] vs experiment "
                           "4 (not gating)")
    with pytest.raises(InputError, match="report is of experiment 4"):
        evaluate_gate({**_report(0.95), "experiment_id": 4}, fail_under={}, comparison=worse)


def test_gate_threshold_edges():
    assert evaluate_gate(_report(0.9), fail_under={"exact_match": 0.9}).ok  # >= passes
    close = evaluate_gate(_report(0.899), fail_under={"exact_match": 0.9})
    assert close.line == "GATE FAILED: exact_match 0.899 < 0.900"  # never "0.90 < 0.90"
    none = evaluate_gate(_report(0.5), fail_under={})
    assert none.ok and none.line == "GATE PASSED: experiment 7 completed (no threshold given)"
    report = _report(0.5)
    report["scorers"]["exact_match"]["mean"] = None
    assert "no scored value" in evaluate_gate(report, fail_under={"exact_match": 0.1}).line


def test_gate_on_stored_experiments(db_url):
    base = scored_run({"exact_match": [1, 1, 1, 1] * 10,
                               "judge": [1.0, 0.9, 0.8, 0.9] * 10})
    cand = scored_run({"exact_match": [1, 1, 1, 0] * 10,
                               "judge": [0.6, 0.5, 0.7, 0.6] * 10})
    report = experiment_report(cand)
    comparison = compare_experiments(base, cand)
    assert comparison["scorers"]["judge"]["verdict"] == "regressed"

    passed = evaluate_gate(report, fail_under={"exact_match": 0.7, "judge": 0.6})
    assert passed.ok and passed.line == "GATE PASSED: exact_match 0.75 >= 0.70; judge 0.60 >= 0.60"

    result = evaluate_gate(report, fail_under={"exact_match": 0.9, "fluency": 0.5},
                           comparison=comparison, fail_on_regression=True)
    assert not result.ok and len(result.reasons) == 4
    assert result.reasons[0] == "exact_match 0.75 < 0.90"
    assert result.reasons[1] == (f"fluency is not a scorer of experiment {cand} (its scorers: "
                                 "exact_match, judge) — check the --fail-under label")
    assert result.reasons[2].startswith("exact_match regressed by -0.25 [")
    assert result.reasons[3].startswith("judge regressed by -0.30 [")
    assert result.reasons[3].endswith(f"] vs experiment {base}")
    assert result.line == "GATE FAILED: " + "; ".join(result.reasons)


# --- JUnit -----------------------------------------------------------------------------------


def _junit_run() -> tuple[int, list[int]]:
    """3 items x 2 repeats x 2 scorers: 12 testcases, 1 failure, 3 errors, 2 skipped."""
    exp, (i0, i1, i2) = make_experiment(3, repeats=2, name="nightly", scorers=SCORERS)
    record(exp, [
        (i0, 0, {}, [score("exact_match", 1.0), score("judge", 1.0)]),
        (i0, 1, {"output": "Lyon\x1b\x0b"},
         [score("exact_match", 0.0, explanation='expected "Paris"'), score("judge", 1.0)]),
        (i1, 0, {}, [score("exact_match", 1.0),
                     score("judge", None, error="judge answer unparseable")]),
        (i1, 1, {"ok": False, "error": "429 rate limited", "error_type": "RateLimitError"}, []),
        (i2, 0, {}, [score("exact_match", 1.0), score("judge", 1.0)]),
    ])  # (i2, 1) is pending
    return exp, [i0, i1, i2]


def test_junit_counts_names_and_outcomes(db_url, tmp_path: Path):
    exp_id, _ = _junit_run()
    exp, dataset, rows = load_items(exp_id)
    report = build_report(exp, dataset, rows)
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "junit.xml"
    path.write_text("stale")
    write_junit(report, rows, path)

    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    assert suite.get("name") == "nightly"
    for element in (root, suite):
        assert {k: element.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
            "tests": "12", "failures": "1", "errors": "3", "skipped": "2"}
    cases = suite.findall("testcase")
    assert len(cases) == 12
    assert {c.get("classname") for c in cases} == {"evalq.nightly"}
    assert [c.get("name") for c in cases[:4]] == [
        "nightly-0[0] exact_match", "nightly-0[0] judge",
        "nightly-0[1] exact_match", "nightly-0[1] judge"]
    assert {c.get("time") for c in cases} == {"0.250", "0.000"}
    by_name = {c.get("name"): c for c in cases}

    failure = by_name["nightly-0[1] exact_match"].find("failure")
    assert failure is not None and failure.get("message") == 'expected "Paris"'
    assert "value: 0.0" in (failure.text or "") and "Lyon" in (failure.text or "")
    assert len(suite.findall("testcase/failure")) == 1

    unscored = by_name["nightly-1[0] judge"].find("error")
    assert unscored is not None and "judge answer unparseable" in (unscored.get("message") or "")
    for label in ("exact_match", "judge"):
        target = by_name[f"nightly-1[1] {label}"].find("error")
        assert target is not None and target.get("type") == "RateLimitError"
        assert target.get("message") == "RateLimitError: 429 rate limited"
        assert by_name[f"nightly-2[1] {label}"].find("skipped") is not None
    passed = by_name["nightly-0[0] judge"]
    assert list(passed) == []
    assert [p.name for p in path.parent.iterdir()] == ["junit.xml"]  # no temporary file left

    gate = evaluate_gate(report, fail_under={})
    assert not gate.ok
    assert gate.reasons == [f"experiment {exp_id} is running, not completed — wait for it to "
                            "finish before gating"]
