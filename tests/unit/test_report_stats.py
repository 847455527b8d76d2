"""The experiment report's numbers, worked out independently: the interval is over test
cases (repeats averaged first), pass rates over rows, the within-item spread apart; the
timing of an experiment that was resumed or re-run; the gate's label check; the compare
and status texts; the exit code of a run whose budget ran out.

Expected values are worked by hand (written out below) or with the statistics module;
the Student's t critical values are the printed table's (t(5) = 2.5706, t(19) = 2.0930).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from models.crud import (
    get_experiment,
    mark_experiment,
    record_item_outcome,
    reset_failed_results,
    result_status_counts,
)
from models.db import session_scope
from models.tables import Experiment, ExperimentStatus
from scheduler.cli import render
from scheduler.cli.experiments import run_exit_code
from scheduler.cli.main import app
from scheduler.errors import InputError
from scheduler.reports.experiment import (
    ItemRow,
    breakdown,
    build_report,
    experiment_report,
    scorer_stats,
    timing,
)
from scheduler.reports.gate import check_labels
from scheduler.reports.stats import mean_ci
from tests.factories import make_experiment, result_in, score_in

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def rows_of(values: list[list[float | None]], label: str = "s", *,
            category: list[str] | None = None) -> list[ItemRow]:
    """ItemRows of items whose repeats scored `values[item]` (None: could not score)."""
    rows = []
    for item, repeats in enumerate(values):
        for rep, value in enumerate(repeats):
            rows.append(ItemRow.model_construct(
                item_id=item + 1, key=f"k{item}", position=item + 1, repeat=rep,
                meta={"category": category[item]} if category else {}, status="ok",
                output="o", latency_ms=1.0, cost_usd=0.0, prompt_tokens=0,
                completion_tokens=0, cost_known=True, attempts=1, cached=False,
                updated_at=None,
                scores={label: {"value": value, "passed": value is not None and value >= 1.0,
                                "explanation": None, "error": None, "judge_cost_usd": 0.0}}))
    return rows


# --- 1. repeats are clustered --------------------------------------------------------


def test_interval_is_over_item_means_worked_by_hand():
    # 6 items x 2 repeats: (1,1) (1,0) (1,0) (0,1) (1,1) (1,0)
    # item means 1, .5, .5, .5, 1, .5 -> mean 4/6; deviations 1/3 (x2) and -1/6 (x4):
    # sum of squares 2/9 + 4/36 = 1/3, variance (1/3)/5 = 1/15, sd 0.2581989,
    # stderr sd/sqrt(6) = 0.1054093, half width t(5) * stderr = 2.5706 * 0.1054093.
    stats = scorer_stats(rows_of([[1, 1], [1, 0], [1, 0], [0, 1], [1, 1], [1, 0]]), "s")
    half = 2.5706 * math.sqrt(1 / 15) / math.sqrt(6)
    assert stats["mean"] == pytest.approx(4 / 6, abs=1e-6)
    assert stats["stderr"] == pytest.approx(0.1054093, abs=1e-6)
    assert stats["ci_low"] == pytest.approx(4 / 6 - half, abs=1e-6)  # 0.395702
    assert stats["ci_high"] == pytest.approx(4 / 6 + half, abs=1e-6)  # 0.937632
    assert (stats["n_items"], stats["n_scored"], stats["n_unscored"]) == (6, 12, 0)
    assert stats["pass_rate"] == pytest.approx(8 / 12, abs=1e-6)  # over the 12 rows
    # within-item spread: SDs 0, .7071 (x4), 0 and variances 0, .5 (x4), 0
    assert stats["per_item_sd_mean"] == pytest.approx(4 * math.sqrt(0.5) / 6, abs=1e-6)
    assert stats["per_item_variance_mean"] == pytest.approx(2 / 6, abs=1e-6)
    assert stats["items_with_repeats"] == 6
    # the old, wrong interval (12 rows as if independent) would be
    # 2.2010 * 0.4923660 / sqrt(12) = 0.3128 wide on each side, not 0.2710
    assert stats["ci_high"] - stats["mean"] < 0.28


def test_identical_repeats_do_not_narrow_the_interval():
    # 20 items, 11 pass: the case of 5 identical repeats must give the interval
    # of one repeat (n = 20 items, t(19) = 2.0930), not one over 100 rows.
    once = [[1.0] if i < 11 else [0.0] for i in range(20)]
    five = [[v[0]] * 5 for v in once]
    a, b = scorer_stats(rows_of(once), "s"), scorer_stats(rows_of(five), "s")
    sd = statistics.stdev([v[0] for v in once])  # sqrt(11 * 9 / 380) = 0.5104178
    half = 2.0930 * sd / math.sqrt(20)
    for stats in (a, b):
        assert stats["mean"] == pytest.approx(0.55, abs=1e-6)
        assert stats["stderr"] == pytest.approx(sd / math.sqrt(20), abs=1e-6)
        assert stats["ci_high"] - stats["ci_low"] == pytest.approx(2 * half, abs=1e-5)
        assert stats["n_items"] == 20
    assert (a["n_scored"], b["n_scored"]) == (20, 100)
    assert b["per_item_sd_mean"] == 0.0 and "per_item_sd_mean" not in a
    assert b["ci_high"] - b["ci_low"] == pytest.approx(0.4778, abs=1e-4)


def test_unequal_repeats_weigh_every_item_once():
    # item 1 scored (1, 1, 0), item 2 scored (0) and once could not be scored (None):
    # item means 2/3 and 0 -> mean 1/3 (the rows' mean would be 2/4); two items give an
    # interval with t(1) = 12.7062, clipped to [0, 1].
    stats = scorer_stats(rows_of([[1, 1, 0], [0, None]]), "s")
    assert stats["mean"] == pytest.approx(1 / 3, abs=1e-6)
    assert stats["stderr"] == pytest.approx(statistics.stdev([2 / 3, 0]) / math.sqrt(2),
                                            abs=1e-6)
    assert (stats["ci_low"], stats["ci_high"]) == (0.0, 1.0)
    assert (stats["n_items"], stats["n_scored"], stats["n_unscored"]) == (2, 4, 1)
    assert stats["pass_rate"] == pytest.approx(2 / 4, abs=1e-6)
    assert stats["items_with_repeats"] == 1  # item 2 has one scored repeat


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    # 1000 seeded experiments: 20 test cases whose pass probabilities are drawn from
    # U(0, 1) (true mean 0.5), 5 repeats each. The report's interval covers 0.5 about 95%
    # of the time; the old interval over the 100 rows covered it about 79% of the time.
    rng = random.Random(13)
    covered = covered_by_rows = 0
    for _ in range(1000):
        values = [[1.0 if rng.random() < p else 0.0 for _ in range(5)]
                  for p in [rng.random() for _ in range(20)]]
        stats = scorer_stats(rows_of(values), "s")
        covered += stats["ci_low"] <= 0.5 <= stats["ci_high"]
        _, low, high = mean_ci([v for repeats in values for v in repeats])
        assert low is not None and high is not None
        covered_by_rows += low <= 0.5 <= high
    assert 0.93 <= covered / 1000 <= 0.97, covered
    assert covered_by_rows / 1000 < 0.85, covered_by_rows


def test_one_item_has_no_interval_and_none_scored_has_no_mean():
    one = scorer_stats(rows_of([[1, 0, 1]]), "s")
    assert one["mean"] == pytest.approx(2 / 3, abs=1e-6)
    assert (one["stderr"], one["ci_low"], one["ci_high"]) == (None, None, None)
    assert (one["n_items"], one["n_scored"]) == (1, 3)
    none = scorer_stats(rows_of([[None], [None]]), "s")
    assert (none["mean"], none["pass_rate"], none["n_items"], none["n_unscored"]) == (
        None, None, 0, 2)


def test_breakdown_groups_say_their_items():
    rows = rows_of([[1, 1], [0, 1], [0, 0]], category=["a", "a", "b"])
    groups = breakdown(rows, "category")["groups"]
    assert groups["a"]["n_items"] == 2
    assert groups["a"]["scorers"]["s"]["n_items"] == 2
    assert groups["a"]["scorers"]["s"]["n_scored"] == 4
    assert groups["a"]["scorers"]["s"]["mean"] == pytest.approx(0.75)  # means 1 and .5
    assert groups["b"]["scorers"]["s"]["mean"] == 0.0


def test_report_and_table_show_items_and_rows():
    exp = Experiment(id=9, name="e", dataset_id=1, model="m", repeats=2, total_items=4,
                     status=ExperimentStatus.COMPLETED)
    report = build_report(exp, None, rows_of([[1, 1], [0, 1]]))
    assert report["scorers"]["s"]["n_items"] == 2 and report["scorers"]["s"]["n_scored"] == 4
    with render.out.capture() as captured:
        render.print_report(report)
    text = captured.get()
    assert "items" in text and "over items" in text
    line = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("s "))
    assert [cell.strip() for cell in line.split("│") if cell.strip()][4:7] == ["2", "4", "0"]


# --- 9. wall time after a resume or a rerun ------------------------------------------


def _done(item: int, at: datetime) -> ItemRow:
    row = rows_of([[1.0]])[0]
    return row.model_copy(update={"item_id": item, "updated_at": at})


def test_timing_of_a_run_started_once():
    exp = Experiment(dataset_id=1, first_started_at=T0, started_at=T0,
                     finished_at=T0 + timedelta(seconds=4))
    out = timing(exp, [_done(i, T0 + timedelta(seconds=1)) for i in range(10)])
    assert out == {"started_at": T0.isoformat(),
                   "finished_at": (T0 + timedelta(seconds=4)).isoformat(),
                   "wall_time_s": 4.0, "items_per_s": 2.5, "last_run": None}


def test_timing_after_a_rerun_gives_the_span_and_the_rerun():
    # first run 12:00:00 - 12:00:08 (10 items), rerun of 2 items 12:05:00 - 12:05:04
    restart, end = T0 + timedelta(minutes=5), T0 + timedelta(minutes=5, seconds=4)
    rows = ([_done(i, T0 + timedelta(seconds=i)) for i in range(8)]
            + [_done(8, restart + timedelta(seconds=1)), _done(9, restart + timedelta(seconds=3))])
    exp = Experiment(dataset_id=1, first_started_at=T0, started_at=restart, finished_at=end)
    out = timing(exp, rows)
    assert out["started_at"] == T0.isoformat()
    assert out["wall_time_s"] == 304.0 and out["items_per_s"] == round(10 / 304, 3)
    assert out["last_run"] == {"started_at": restart.isoformat(), "wall_time_s": 4.0,
                               "items": 2, "items_per_s": 0.5}
    with render.out.capture() as captured:
        render.print_report(build_report(
            exp.model_copy(update={"id": 1, "name": "e", "model": "m", "status": "completed"}),
            None, rows))
    assert "304.0 s, 0.033 items/s from the first start; last re-run 4.0 s, 2 items, " \
           "0.500 items/s" in " ".join(captured.get().split())


def test_timing_of_a_row_from_before_the_first_start_column():
    exp = Experiment(dataset_id=1, first_started_at=None, started_at=T0,
                     finished_at=T0 + timedelta(seconds=2))
    out = timing(exp, [_done(1, T0)])
    assert out["started_at"] == T0.isoformat() and out["wall_time_s"] == 2.0
    assert out["last_run"] is None
    running = timing(Experiment(dataset_id=1, first_started_at=T0, started_at=T0), [])
    assert (running["wall_time_s"], running["items_per_s"]) == (None, None)


def _times(session: Session, experiment_id: int) -> tuple[Any, Any, Any]:
    exp = get_experiment(session=session, experiment_id=experiment_id)
    session.refresh(exp)
    return exp.first_started_at, exp.started_at, exp.finished_at


def test_restarts_keep_the_first_start(db_url):
    exp_id, ids = make_experiment(3, name="restarts")
    with session_scope() as session:
        mark_experiment(session=session, experiment_id=exp_id, status=ExperimentStatus.RUNNING)
    with session_scope() as session:
        first, started, finished = _times(session, exp_id)
    assert first is not None and first == started and finished is None
    with session_scope() as session:
        for i, item in enumerate(ids):
            record_item_outcome(session=session, result_in=result_in(exp_id, item, ok=i != 1),
                                scores_in=[score_in()] if i != 1 else [])
    with session_scope() as session:
        _, _, finished = _times(session, exp_id)
    assert finished is not None  # completed
    with session_scope() as session:  # rerun --failed
        assert reset_failed_results(session=session, experiment_id=exp_id) == [(ids[1], 0)]
    with session_scope() as session:
        again, restarted, finished_again = _times(session, exp_id)
    assert again == first and restarted > first and finished_again is None
    with session_scope() as session:
        record_item_outcome(session=session, result_in=result_in(exp_id, ids[1]),
                            scores_in=[score_in()])
    report = experiment_report(exp_id)
    assert report["started_at"] == first.isoformat()
    assert report["last_run"]["started_at"] == restarted.isoformat()
    assert report["last_run"]["items"] == 1
    assert report["wall_time_s"] >= report["last_run"]["wall_time_s"]
    with session_scope() as session:  # resume: restamps started_at only
        mark_experiment(session=session, experiment_id=exp_id, status=ExperimentStatus.RUNNING)
    with session_scope() as session:
        kept, resumed, _ = _times(session, exp_id)
    assert kept == first and resumed >= restarted


def test_a_row_without_first_start_takes_its_started_at_on_restart(db_url):
    exp_id, _ = make_experiment(1, name="legacy")
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=exp_id)
        exp.started_at, exp.first_started_at = T0, None
        session.add(exp)
    with session_scope() as session:
        mark_experiment(session=session, experiment_id=exp_id, status=ExperimentStatus.RUNNING)
    with session_scope() as session:
        first, started, _ = _times(session, exp_id)
    assert first == T0 and started > T0


# --- 5. gate labels ------------------------------------------------------------------


def test_check_labels_lists_the_valid_ones():
    check_labels({"exact_match": 0.9, "assert:contains": 0.5},
                 ["exact_match", "assert:contains"])
    with pytest.raises(InputError) as caught:
        check_labels({"nosuch": 0.9, "exact_match": 0.5}, ["exact_match", "assert:contains"])
    assert str(caught.value) == ("--fail-under 'nosuch': not a scorer of this run (its "
                                 "scorers: assert:contains, exact_match) — name one of them;"
                                 " nothing was run")
    assert caught.value.exit_code == 2


# --- 6. compare lists both flips -----------------------------------------------------


def _flip(key: str) -> dict[str, Any]:
    return {"key": key, "baseline_output": f"b-{key}", "candidate_output": f"c-{key}"}


def test_compare_text_lists_fail_to_pass_too():
    data = {"baseline": {"id": 1, "name": "b", "model": "m"},
            "candidate": {"id": 2, "name": "c", "model": "m"},
            "same_dataset_version": True, "items_compared": 14,
            "scorers": {"em": {"baseline_mean": 0.5, "candidate_mean": 0.6, "diff": 0.1,
                               "ci_low": -0.1, "ci_high": 0.3,
                               "verdict": "no significant change",
                               "n_pass_to_fail": 1, "pass_to_fail": [_flip("lost")],
                               "n_fail_to_pass": 12,
                               "fail_to_pass": [_flip(f"won{i}") for i in range(12)]}},
            "cost": {}, "latency_ms": {}}
    with render.out.capture() as captured:
        render.print_comparison(data)
    text = captured.get()
    assert "em pass→fail lost: 'b-lost' → 'c-lost'" in text
    assert "em fail→pass won0: 'b-won0' → 'c-won0'" in text
    assert "won9" in text and "won10" not in text
    assert "em fail→pass … and 2 more" in text


# --- 7. status and the exit code of a budget_exceeded run ----------------------------


def test_status_counts_skipped_items_apart(db_url):
    exp_id, ids = make_experiment(5, name="budget")
    with session_scope() as session:
        record_item_outcome(session=session, result_in=result_in(exp_id, ids[0]),
                            scores_in=[score_in()])
        record_item_outcome(session=session, result_in=result_in(exp_id, ids[1], ok=False),
                            scores_in=[])
        for item in ids[2:4]:
            record_item_outcome(session=session, scores_in=[], result_in=result_in(
                exp_id, item, ok=False, status="skipped_budget", error=None, error_type=None))
        assert result_status_counts(session=session, experiment_id=exp_id) == {
            "ok": 1, "error": 1, "skipped_budget": 2}
    result = CliRunner().invoke(app, ["status", str(exp_id)])
    assert result.exit_code == 0, result.stderr
    assert (f"experiment {exp_id}: running — 1 done, 1 failed, 2 skipped (budget spent), "
            "1 pending of 5") in " ".join(result.stdout.split())
    result = CliRunner().invoke(app, ["status", str(exp_id), "--json"])
    state = json.loads(result.stdout)
    assert (state["done"], state["failed"], state["skipped_budget"], state["pending"]) == (
        1, 1, 2, 1)


def _budget_report(**counts: int) -> dict[str, Any]:
    return {"experiment_id": 3, "status": "budget_exceeded", "budget_usd": 0.5,
            "counts": {"total": 10, "done": 6, "failed": 0, "skipped_budget": 4,
                       "pending": 0, **counts}, "errors": {}, "error": None}


def test_a_run_whose_budget_ran_out_exits_1(capsys):
    assert run_exit_code(_budget_report(), None) == 1
    err = capsys.readouterr().err
    assert "experiment 3 spent its budget (--max-cost 0.5 USD): 4 of 10 items were not " \
           "run; its scores cover the 6 that ran" in " ".join(err.split())
    assert "larger --max-cost" in err
    completed = {**_budget_report(skipped_budget=0), "status": "completed"}
    assert run_exit_code(completed, None) == 0
