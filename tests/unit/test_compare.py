"""Comparing two experiments on SQLite and PostgreSQL: items matched on key, the paired
bootstrap, pass/fail flips, dataset versions, cost and latency, and the pairwise judge
through the fake model server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.fakellm import FakeLLM
from models.crud import (
    create_experiment,
    get_or_create_dataset,
    record_item_outcome,
    stored_items,
)
from models.db import session_scope
from models.tables import Experiment, ExperimentStatus, ScoreBase
from scheduler.errors import InputError
from scheduler.reports.compare import bootstrap_ci, compare_experiments
from tests.factories import result_in, score_in

JUDGE = "openai/judge-model"

# --- local factories -------------------------------------------------------------------------


def make_dataset(keys: list[str], *, name: str = "qa", version: str = "v1") -> tuple[int, dict]:
    """A stored dataset with these item keys: (dataset id, {key: item id})."""
    items: list[dict[str, Any]] = [
        {"key": k, "position": i + 1, "input": f"question {k}", "expected": f"answer {k}",
         "meta": {}, "assertions": None} for i, k in enumerate(keys)]
    with session_scope() as session:
        dataset, _ = get_or_create_dataset(session=session, name=name, version=version,
                                           source=None, items=items)
        assert dataset.id is not None
        stored = stored_items(session=session, dataset_id=dataset.id)
        return dataset.id, {item.key: item.id for item in stored}


def make_run(dataset_id: int, n_items: int, *, name: str, repeats: int = 1) -> int:
    """A RUNNING experiment over the dataset."""
    with session_scope() as session:
        exp = create_experiment(session=session, experiment_in=Experiment(
            name=name, model=f"evalq/{name}", dataset_id=dataset_id, repeats=repeats,
            total_items=n_items * repeats, status=ExperimentStatus.RUNNING, scorers=[]))
        assert exp.id is not None
        return exp.id


def score(label: str, value: float, *, passed: bool | None = None,
          explanation: str = "e", judge_cost: float = 0.0) -> ScoreBase:
    return score_in(label, value, passed=value >= 1.0 if passed is None else passed,
                    explanation=explanation, judge_cost_usd=judge_cost)


def record(experiment_id: int, outcomes: list[tuple[int, int, dict, list[ScoreBase]]]
           ) -> None:
    """Write (item id, repeat, result overrides, scores) outcomes with record_item_outcome."""
    with session_scope() as session:
        for item_id, repeat, overrides, scores in outcomes:
            ok = overrides.pop("ok", True)
            record_item_outcome(session=session, scores_in=scores, result_in=result_in(
                experiment_id, item_id, repeat, ok=ok, **overrides))


def pass_fail_run(dataset_id: int, ids: dict[str, int], name: str, failing: set[str]) -> int:
    """An experiment where exact_match fails exactly the `failing` keys."""
    exp = make_run(dataset_id, len(ids), name=name)
    record(exp, [(item_id, 0, {"output": f"{name} says {key}"},
                  [score("exact_match", 0.0 if key in failing else 1.0,
                         explanation=f"{name} {'wrong' if key in failing else 'right'}")])
                 for key, item_id in ids.items()])
    return exp


# --- the paired bootstrap by hand ------------------------------------------------------------


def test_bootstrap_by_hand():
    assert bootstrap_ci([1.0, 1.0, 1.0, 1.0]) == (1.0, 1.0)
    # Two items, +1 and -1: a resample's mean is -1, 0 or 1 with 1/4, 1/2, 1/4 chances, so
    # the 2.5% and 97.5% quantiles of 2000 resamples are -1 and 1.
    assert bootstrap_ci([1.0, -1.0]) == (-1.0, 1.0)
    assert bootstrap_ci([0.2, 0.5, -0.1], seed=3) == bootstrap_ci([0.2, 0.5, -0.1], seed=3)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_four_items_all_plus_one_is_improved(db_url):
    dataset_id, ids = make_dataset([f"k{i}" for i in range(4)])
    base = pass_fail_run(dataset_id, ids, "base", failing=set(ids))
    cand = pass_fail_run(dataset_id, ids, "cand", failing=set())
    em = compare_experiments(base, cand)["scorers"]["exact_match"]
    assert (em["ci_low"], em["ci_high"], em["diff"], em["verdict"]) == (1.0, 1.0, 1.0,
                                                                         "improved")
    assert em["n_pairs"] == 4 and em["n_fail_to_pass"] == 4 and em["n_pass_to_fail"] == 0


# --- regression and balanced noise -----------------------------------------------------------


def test_known_regression_is_flagged_with_the_flipped_items(db_url):
    keys = [f"item-{i:03d}" for i in range(200)]
    dataset_id, ids = make_dataset(keys)
    base_fail = {k for i, k in enumerate(keys) if i % 10 == 9}  # 20 fail: 90% pass
    newly_failing = [k for i, k in enumerate(keys) if i % 10 in (3, 6)]  # 40 more
    fixed = ["item-009", "item-019"]
    cand_fail = (base_fail - set(fixed)) | set(newly_failing) | {"item-000", "item-010"}
    base = pass_fail_run(dataset_id, ids, "base", base_fail)
    cand = pass_fail_run(dataset_id, ids, "cand", cand_fail)

    out = compare_experiments(base, cand)
    assert out["same_dataset_version"] is True and out["items_compared"] == 200
    assert out["only_in_baseline"] == [] and out["n_only_in_candidate"] == 0
    em = out["scorers"]["exact_match"]
    assert em["baseline_mean"] == 0.9 and em["candidate_mean"] == 0.7
    assert em["diff"] == pytest.approx(-0.2)  # 90% -> 70%: 18 + 40 + 2 fail
    assert em["verdict"] == "regressed" and em["ci_high"] < 0 < 1 + em["ci_low"]
    assert em["ci_low"] < em["diff"] < em["ci_high"]
    expected_p2f = sorted(set(newly_failing) | {"item-000", "item-010"})
    assert [e["key"] for e in em["pass_to_fail"]] == expected_p2f
    assert em["n_pass_to_fail"] == 42
    assert [e["key"] for e in em["fail_to_pass"]] == fixed and em["n_fail_to_pass"] == 2
    first = em["pass_to_fail"][0]
    assert first == {"key": "item-000", "input": "question item-000",
                     "expected": "answer item-000",
                     "baseline_output": "base says item-000",
                     "candidate_output": "cand says item-000",
                     "baseline_value": 1.0, "candidate_value": 0.0,
                     "baseline_explanation": "base right",
                     "candidate_explanation": "cand wrong"}
    json.dumps(out)  # JSON-able
    # The same call is deterministic; another seed moves the interval only slightly.
    assert compare_experiments(base, cand)["scorers"]["exact_match"] == em
    assert compare_experiments(base, cand, seed=1)["scorers"]["exact_match"]["verdict"] == \
        "regressed"


def test_balanced_noise_is_not_flagged(db_url):
    keys = [f"n{i}" for i in range(200)]
    dataset_id, ids = make_dataset(keys)
    base = pass_fail_run(dataset_id, ids, "base", {k for i, k in enumerate(keys) if i % 10 == 1})
    cand = pass_fail_run(dataset_id, ids, "cand", {k for i, k in enumerate(keys) if i % 10 == 2})
    em = compare_experiments(base, cand)["scorers"]["exact_match"]
    assert em["baseline_mean"] == em["candidate_mean"] == 0.9 and em["diff"] == 0.0
    assert em["verdict"] == "no significant change" and em["ci_low"] < 0 < em["ci_high"]
    assert em["n_pass_to_fail"] == em["n_fail_to_pass"] == 20


# --- means, repeats, costs, latencies --------------------------------------------------------


def test_repeats_are_averaged_and_diff_is_the_difference_of_means(db_url):
    dataset_id, ids = make_dataset(["a", "b", "c", "d"])
    a, b, c, d = (ids[k] for k in "abcd")
    base = make_run(dataset_id, 4, name="base", repeats=2)
    record(base, [
        (a, 0, {"latency_ms": 100.0, "cost_usd": 0.01}, [score("q", 0.5, passed=True)]),
        (a, 1, {"latency_ms": 300.0, "cost_usd": 0.01}, [score("q", 0.25, passed=False)]),
        (b, 0, {"latency_ms": 200.0, "cost_usd": 0.01}, [score("q", 1.0, judge_cost=0.02)]),
        (b, 1, {"latency_ms": 200.0, "cost_usd": 0.01}, [score("q", 1.0)]),
        (c, 0, {"latency_ms": 200.0, "cost_usd": 0.01}, [score("q", 0.0), score("only_b", 1)]),
        (c, 1, {"ok": False, "cost_usd": 0.0}, []),
        (d, 0, {"latency_ms": 200.0, "cost_usd": 0.01}, [score("q", 0.0)]),
        (d, 1, {"latency_ms": 200.0, "cost_usd": 0.01}, [score("q", 0.0)]),
    ])
    cand = make_run(dataset_id, 4, name="cand")
    record(cand, [
        (a, 0, {"latency_ms": 50.0, "cost_usd": 0.002}, [score("q", 0.75, passed=True)]),
        (b, 0, {"latency_ms": 50.0, "cost_usd": 0.002}, [score("q", 0.5, passed=False)]),
        (c, 0, {"latency_ms": 50.0, "cost_usd": 0.002},
         [score_in("q", None, passed=None, error="judge unparseable")]),
        (d, 0, {"latency_ms": 90.0, "cost_usd": 0.002}, [score("q", 1.0, passed=True)]),
    ])
    out = compare_experiments(base, cand)
    q = out["scorers"]["q"]
    # Per item over repeats: base a=0.375 b=1 d=0; cand a=0.75 b=0.5 d=1; c unscored in cand.
    assert q["n_pairs"] == 3
    assert q["baseline_mean"] == pytest.approx((0.375 + 1 + 0) / 3, abs=1e-6)
    assert q["candidate_mean"] == pytest.approx((0.75 + 0.5 + 1) / 3, abs=1e-6)
    assert q["diff"] == pytest.approx(q["candidate_mean"] - q["baseline_mean"], abs=2e-6)
    # a passes in base with a pass rate of 1/2 over repeats; b: pass -> fail; d: fail -> pass.
    assert [e["key"] for e in q["pass_to_fail"]] == ["b"]
    assert [e["key"] for e in q["fail_to_pass"]] == ["d"]
    assert q["pass_to_fail"][0]["baseline_value"] == 1.0
    assert out["scorers_only_in_baseline"] == ["only_b"] and "only_b" not in out["scorers"]
    cost = out["cost"]
    assert cost["baseline"]["target"] == pytest.approx(0.07)
    assert cost["baseline"]["judge"] == pytest.approx(0.02)
    assert cost["baseline"]["total"] == pytest.approx(0.09)
    assert cost["baseline"]["mean_per_item"] == pytest.approx(0.09 / 8)
    assert cost["candidate"]["total"] == pytest.approx(0.008)
    assert cost["diff"]["total"] == pytest.approx(0.008 - 0.09)
    lat = out["latency_ms"]
    assert lat["baseline"] == {"p50": 200.0, "p95": 270.0}  # 7 latencies: 100, 200 x5, 300
    assert lat["candidate"] == {"p50": 50.0, "p95": 84.0}
    assert lat["diff"]["p50"] == -150.0
    assert out["baseline"] == {"id": base, "name": "base", "status": "completed",
                               "model": "evalq/base", "repeats": 2, "dataset": "qa",
                               "dataset_version": "v1"}
    assert out["pairwise"] is None


# --- dataset versions ------------------------------------------------------------------------


def test_different_versions_compare_the_intersection(db_url):
    v1, ids1 = make_dataset([f"k{i:02d}" for i in range(10)], version="v1")
    v2, ids2 = make_dataset([f"k{i:02d}" for i in range(5, 75)], version="v2")
    base = pass_fail_run(v1, ids1, "base", failing=set())
    cand = pass_fail_run(v2, ids2, "cand", failing={"k05"})
    out = compare_experiments(base, cand)
    assert out["same_dataset_version"] is False and out["items_compared"] == 5
    assert out["only_in_baseline"] == [f"k{i:02d}" for i in range(5)]
    assert out["n_only_in_baseline"] == 5
    assert out["n_only_in_candidate"] == 65 and len(out["only_in_candidate"]) == 50
    assert out["only_in_candidate"][0] == "k10"
    assert (out["baseline"]["dataset_version"], out["candidate"]["dataset_version"]) == \
        ("v1", "v2")
    em = out["scorers"]["exact_match"]
    assert em["n_pairs"] == 5 and [e["key"] for e in em["pass_to_fail"]] == ["k05"]
    assert out["cost"]["baseline"]["n_results"] == 5  # costs over the compared items only


def test_no_common_item_is_an_input_error(db_url):
    v1, ids1 = make_dataset(["a", "b"], version="v1")
    v2, ids2 = make_dataset(["c"], version="v2")
    base = pass_fail_run(v1, ids1, "base", failing=set())
    cand = pass_fail_run(v2, ids2, "cand", failing=set())
    with pytest.raises(InputError, match="share no test case") as info:
        compare_experiments(base, cand)
    assert info.value.exit_code == 2
    with pytest.raises(InputError, match="n_boot"):
        compare_experiments(base, base, n_boot=0)


# --- the pairwise judge ----------------------------------------------------------------------


def _verdict(winner: str) -> str:
    return json.dumps({"reasoning": f"{winner} is better", "winner": winner})


def test_pairwise_judge_win_rate(db_url, fake_llm: FakeLLM):
    keys = [f"p{i:02d}" for i in range(12)]
    dataset_id, ids = make_dataset(keys)
    strong_candidate = {k for i, k in enumerate(keys) if i % 4 != 0}  # 8 of the 11 judged
    base, cand = make_run(dataset_id, 12, name="base"), make_run(dataset_id, 12, name="cand")
    record(base, [(ids[k], 0, {"output": f"{'WEAK' if k in strong_candidate else 'STRONG'} {k}"}
                   if k != "p11" else {"ok": False}, [score("exact_match", 1.0)]) for k in keys])
    record(cand, [(ids[k], 0, {"output": f"{'STRONG' if k in strong_candidate else 'WEAK'} {k}"},
                   [score("exact_match", 1.0)]) for k in keys])
    # Consistent verdicts: STRONG wins in either position.
    fake_llm.configure(latency_ms=30, answers={"<response_a>\nSTRONG": _verdict("A"),
                                               "<response_a>\nWEAK": _verdict("B")})
    out = compare_experiments(base, cand, pairwise={"model": JUDGE,
                                                    "api_base": fake_llm.base_url})
    pw = out["pairwise"]
    assert pw["n_judged"] == 11 and pw["n_could_not_judge"] == 0
    assert pw["n_without_output"] == 1  # p11: the baseline's target failed
    assert pw["win_rate"] == pytest.approx(8 / 11, abs=1e-6)
    assert (pw["wins"], pw["ties"], pw["losses"]) == (8, 0, 3)
    assert pw["ci_low"] < pw["win_rate"] < pw["ci_high"] and pw["judge"] == JUDGE
    stats = fake_llm.stats()
    assert stats["total"] == 2 * 11  # two judge calls (positions swapped) per item
    assert 2 <= stats["max_in_flight"] <= 8
    prompts = [m["content"] for r in fake_llm.requests() for m in r["body"]["messages"]
               if m["role"] == "user"]
    # p01: the candidate (STRONG) and the baseline (WEAK) each shown once in each position.
    for shown in ("<response_a>\nSTRONG p01\n", "<response_b>\nWEAK p01\n",
                  "<response_a>\nWEAK p01\n", "<response_b>\nSTRONG p01\n"):
        assert sum(shown in p for p in prompts) == 1


def test_pairwise_could_not_judge_and_bad_options(db_url, fake_llm: FakeLLM):
    dataset_id, ids = make_dataset(["x", "y"])
    base = pass_fail_run(dataset_id, ids, "base", failing=set())
    cand = pass_fail_run(dataset_id, ids, "cand", failing=set())
    fake_llm.configure(answers={"cand says x": "no json here",
                                "<response_a>\n": _verdict("tie")})
    pw = compare_experiments(base, cand, pairwise={"model": JUDGE,
                                                   "api_base": fake_llm.base_url})["pairwise"]
    assert (pw["n_judged"], pw["n_could_not_judge"], pw["win_rate"]) == (1, 1, 0.5)
    assert pw["ties"] == 1 and "unparseable" in pw["errors"][0]
    with pytest.raises(InputError, match="baseline"):
        compare_experiments(base, cand, pairwise={"baseline": "x"})
    with pytest.raises(InputError, match="pairwise judge"):
        compare_experiments(base, cand, pairwise={"no_such_param": 1})
