"""Reports that scale (issue 14, target 8): the dataset file read one line at a time with
the same version hash, load_items reading plain columns, the vectorised bootstrap against
an independent pure-Python one, and the capped item table of the HTML page."""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from models.crud import record_outcomes
from models.db import session_scope
from models.tables import DatasetItem, Result, Score
from scheduler.errors import DatasetFormatError
from scheduler.experiments.dataset_file import FileItems, load_dataset_file
from scheduler.reports.compare import MULTINOMIAL_MAX_VALUES, bootstrap_ci
from scheduler.reports.experiment import ItemRow, build_report, experiment_report, load_items
from scheduler.reports.html import ITEM_TABLE_CAP, render_experiment_html
from tests.factories import make_experiment, result_in, score_in

MAX = 1 << 20


def _write(path: Path, cases: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


# --- the dataset file, streamed ------------------------------------------------------------


def test_streamed_version_is_the_hash_of_the_whole_list(tmp_path: Path) -> None:
    cases = [{"id": f"c{i}", "input": f"q{i} é", "expected": i,
              "metadata": {"b": 1, "a": [i]}} for i in range(50)]
    parsed = load_dataset_file(_write(tmp_path / "d.jsonl", cases), max_line_bytes=MAX)
    canon = json.dumps(  # the definition, computed over the whole list at once
        [[i["key"], i["input"], i["expected"], i["meta"], i["assertions"], i["tools"]]
         for i in list(parsed.items)], sort_keys=True, ensure_ascii=False,
        separators=(",", ":"))
    assert parsed.version == hashlib.sha256(canon.encode()).hexdigest()[:16]


def test_file_items_are_read_again_on_each_iteration(tmp_path: Path) -> None:
    cases = [{"id": i, "input": f"q{i}"} for i in range(5)]
    parsed = load_dataset_file(_write(tmp_path / "d.jsonl", cases), max_line_bytes=MAX)
    assert isinstance(parsed.items, FileItems)
    assert len(parsed.items) == 5
    first, second = list(parsed.items), list(parsed.items)
    assert first == second and [i["key"] for i in first] == ["0", "1", "2", "3", "4"]
    assert parsed.items[-1]["input"] == "q4" and parsed.items[1:3] == first[1:3]
    with pytest.raises(IndexError):
        parsed.items[5]


def test_a_file_changed_after_validation_is_refused_when_read_again(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [{"id": 1, "input": "a"}, {"id": 2, "input": "b"}])
    parsed = load_dataset_file(path, max_line_bytes=MAX)
    _write(path, [{"id": 1, "input": "a"}, {"id": 2, "input": "changed"}])
    with pytest.raises(DatasetFormatError, match="changed while"):
        list(parsed.items)


# --- load_items: plain columns, the same rows ----------------------------------------------


def test_load_items_matches_the_stored_rows(db_url: str) -> None:
    exp_id, ids = make_experiment(4, repeats=2)
    with session_scope() as session:
        record_outcomes(session=session, experiment_id=exp_id, outcomes=[
            (result_in(exp_id, item, rep, ok=(item, rep) != (ids[1], 0)),
             [score_in(value=float(rep)), score_in("other", value=0.5)])
            for item in ids[:3] for rep in range(2)])
    exp, _, rows = load_items(exp_id)
    assert [(r.item_id, r.repeat) for r in rows] == [(i, rep) for i in ids for rep in range(2)]
    with session_scope() as session:
        items = {i.id: i for i in session.exec(select(DatasetItem))}
        results = {(r.item_id, r.repeat): r for r in session.exec(select(Result))}
        scores = list(session.exec(select(Score)))
    for row in rows:
        item = items[row.item_id]
        assert (row.key, row.position, row.input, row.expected, row.meta) == (
            item.key, item.position, item.input, item.expected, item.meta)
        result = results.get((row.item_id, row.repeat))
        if result is None:
            assert row.status is None and row.scores == {} and row.output is None
            continue
        assert row.status == result.status and row.output == result.output
        assert row.error == result.error and row.latency_ms == result.latency_ms
        assert row.updated_at == result.updated_at
        assert row.scores == {s.scorer: {"value": s.value, "passed": s.passed,
                                         "explanation": s.explanation, "error": s.error,
                                         "judge_cost_usd": s.judge_cost_usd}
                              for s in scores if s.subject_id == result.id}
    assert rows[0].model_dump()["key"] == rows[0].key  # still an ItemRow to its callers
    light = load_items(exp_id, content=False)[2]
    assert all(r.input is None and r.output is None for r in light)
    for by in (None, "category"):  # the lighter rows of experiment_report: the same report
        assert experiment_report(exp_id, by=by) == build_report(exp, _, rows, by=by)


# --- the bootstrap, vectorised ---------------------------------------------------------------


def _pure_python_bootstrap(diffs: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    """The bootstrap as evalq computed it before numpy: an independent computation."""
    rng, n = random.Random(seed), len(diffs)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(n_boot))
    q = statistics.quantiles(means, n=40, method="inclusive")
    return q[0], q[-1]


@pytest.mark.parametrize("distinct", [3, MULTINOMIAL_MAX_VALUES + 50])
def test_bootstrap_agrees_with_a_pure_python_bootstrap(distinct: int) -> None:
    # Both paths (counts per distinct value; item indices) against the old computation:
    # different random streams, the same distribution, so the interval ends agree to
    # within their Monte-Carlo error (a few thousandths here).
    rng = random.Random(7)
    levels = [round(-1 + 2 * k / (distinct - 1), 6) for k in range(distinct)]
    diffs = [rng.choice(levels) * rng.random() ** (distinct > 3) for _ in range(3000)]
    assert (len(set(diffs)) <= MULTINOMIAL_MAX_VALUES) == (distinct == 3)
    low, high = bootstrap_ci(diffs, seed=0)
    ref_low, ref_high = _pure_python_bootstrap(diffs, 2000, seed=0)
    width = ref_high - ref_low
    assert abs(low - ref_low) < 0.1 * width and abs(high - ref_high) < 0.1 * width
    assert bootstrap_ci(diffs, seed=0) == (low, high)  # seeded
    mean = statistics.fmean(diffs)
    assert low < mean < high


def test_bootstrap_of_one_resample_and_of_constant_differences() -> None:
    low, high = bootstrap_ci([0.25, 0.75], n_boot=1)
    assert low == high and low in (0.25, 0.5, 0.75)
    assert bootstrap_ci([0.3] * 1000) == pytest.approx((0.3, 0.3))


# --- the HTML page, capped -------------------------------------------------------------------


def _rows(n: int, failing: set[int]) -> list[ItemRow]:
    return [ItemRow.model_construct(
        item_id=i, key=f"k{i}", position=i + 1, repeat=0, input="q", expected="a",
        meta={}, status="ok", output="a", latency_ms=1.0, updated_at=None,
        scores={"s": {"value": 0.0 if i in failing else 1.0, "passed": i not in failing,
                      "explanation": None, "error": None, "judge_cost_usd": 0.0}})
        for i in range(n)]


def test_the_item_table_is_capped_failures_first_and_says_so() -> None:
    n = ITEM_TABLE_CAP + 500
    failing = {5, 1200, n - 1}
    rows = _rows(n, failing)
    html = render_experiment_html({"name": "big", "scorers": {}}, rows)
    keys = [part.split('"', 1)[0] for part in html.split('data-key="')[1:]]
    assert len(keys) == ITEM_TABLE_CAP
    assert keys[:3] == ["k5", "k1200", f"k{n - 1}"]  # failures first, in file order
    assert keys[3:6] == ["k0", "k1", "k2"]
    assert f"This table shows {ITEM_TABLE_CAP:,} of {n:,} rows" in html
    assert "3 of 3 failed rows shown" in html


def test_a_small_experiment_shows_every_row_without_a_note() -> None:
    html = render_experiment_html({"name": "small", "scorers": {}}, _rows(10, {3}))
    assert html.count("<tr data-failed=") == 10 and 'id="capped"' not in html
