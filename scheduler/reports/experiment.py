"""Experiment reports, computed from the database rows (the --json form).

Per scorer: the mean, standard error and 95% confidence interval (Student's t) over the
test cases, each case's repeats averaged first (the case is the unit of sampling: its
repeats are not independent draws); the pass rate over the scored (item, repeat) rows;
how many items and rows were scored, rows that could not be scored, and rows whose target
failed; with repeats, the spread of each item across its repeats. Latency percentiles,
tokens, cost (target and judge), wall time and throughput (the experiment's whole span,
and the last re-run's own), and a breakdown by a metadata field.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from models.crud import get_experiment
from models.db import session_scope
from models.tables import (
    Dataset,
    DatasetItem,
    Experiment,
    Result,
    ResultStatus,
    Score,
    TargetOutput,
)
from scheduler.reports.stats import mean_ci


def percentile(values: list[float], pct: float) -> float | None:
    """Linear-interpolated percentile (the 'inclusive' method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]


class ItemRow(TargetOutput):
    """One (test case, repeat) of an experiment with its result (the TargetOutput fields;
    `status` None: no result yet) and its scores by label."""

    item_id: int
    key: str
    position: int
    repeat: int
    input: Any = None
    expected: Any = None
    meta: dict[str, Any] = {}  # the test case's metadata
    status: str | None = None
    updated_at: datetime | None = None  # when its Result was (last) written
    scores: dict[str, dict[str, Any]] = {}


_OUTPUT_FIELDS = tuple(TargetOutput.model_fields)


def load_items(experiment_id: int) -> tuple[Experiment, Dataset | None, list[ItemRow]]:
    """The experiment, its dataset and every (item, repeat) row, in file order."""
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        dataset = session.get(Dataset, exp.dataset_id)
        items = session.exec(select(DatasetItem).where(DatasetItem.dataset_id == exp.dataset_id)
                             .order_by(col(DatasetItem.position))).all()
        results = session.exec(select(Result).where(Result.experiment_id == experiment_id)
                               ).all()
        scores = session.exec(select(Score).where(Score.experiment_id == experiment_id)).all()
    by_result: dict[int, list[Score]] = defaultdict(list)
    for score in scores:
        by_result[score.subject_id].append(score)
    results_by_key = {(r.item_id, r.repeat): r for r in results}
    rows: list[ItemRow] = []
    for rep in range(exp.repeats):
        for item in items:
            assert item.id is not None
            result = results_by_key.get((item.id, rep))
            found: dict[str, Any] = {}
            if result is not None:
                found = {f: getattr(result, f) for f in _OUTPUT_FIELDS}
                found["status"] = result.status
                found["updated_at"] = result.updated_at
                found["scores"] = _scores(by_result.get(result.id or -1, []))
            rows.append(ItemRow.model_construct(
                item_id=item.id, key=item.key, position=item.position, repeat=rep,
                input=item.input, expected=item.expected, meta=dict(item.meta or {}),
                **found))
    rows.sort(key=lambda r: (r.position, r.repeat))
    return exp, dataset, rows


def _scores(scores: list[Score]) -> dict[str, dict[str, Any]]:
    return {
        s.scorer: {"value": s.value, "passed": s.passed, "explanation": s.explanation,
                   "error": s.error, "judge_cost_usd": s.judge_cost_usd}
        for s in scores
    }


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def item_means(rows: list[ItemRow], label: str) -> dict[int, list[float]]:
    """The scored values of one scorer per item id (its repeats), items in row order."""
    per_item: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        value = r.scores.get(label, {}).get("value")
        if value is not None:
            per_item[r.item_id].append(float(value))
    return dict(per_item)


def scorer_stats(rows: list[ItemRow], label: str) -> dict[str, Any]:
    """One scorer's statistics. The test case is the unit: each item's scored repeats are
    averaged first, and mean, stderr and the 95% t interval are over those item means
    (n = n_items, t with n_items - 1 degrees of freedom). pass_rate is over the scored
    (item, repeat) rows. With repeats, the mean within-item variance and SD."""
    scored = [r.scores[label] for r in rows if label in r.scores]
    n_values = sum(1 for s in scored if s["value"] is not None)
    per_item = item_means(rows, label)
    means = [statistics.fmean(v) for v in per_item.values()]
    mean, low, high = mean_ci(means)
    if low is not None and high is not None:  # scores live in [0, 1]
        low, high = max(0.0, low), min(1.0, high)
    stderr = (statistics.stdev(means) / math.sqrt(len(means))) if len(means) > 1 else None
    passed = sum(1 for s in scored if s["value"] is not None and s["passed"])
    out: dict[str, Any] = {
        "mean": _r(mean), "stderr": _r(stderr), "ci_low": _r(low), "ci_high": _r(high),
        "ci_method": "t", "pass_rate": _r(passed / n_values) if n_values else None,
        "n_items": len(means), "n_scored": n_values, "n_unscored": len(scored) - n_values,
        "n_failed_items": sum(1 for r in rows if r.status == ResultStatus.ERROR),
    }
    spreads = [v for v in per_item.values() if len(v) > 1]
    if spreads:
        out["per_item_variance_mean"] = _r(statistics.fmean(statistics.variance(v)
                                                            for v in spreads))
        out["per_item_sd_mean"] = _r(statistics.fmean(statistics.stdev(v) for v in spreads))
        out["items_with_repeats"] = len(spreads)
    return out


def _labels(rows: list[ItemRow]) -> list[str]:
    return sorted({label for r in rows for label in r.scores})


def breakdown(rows: list[ItemRow], field_name: str) -> dict[str, Any]:
    """Per value of metadata[field_name]: items and each scorer's mean with its CI."""
    groups: dict[str, list[ItemRow]] = defaultdict(list)
    for r in rows:
        groups[str(r.meta.get(field_name, "(none)"))].append(r)
    labels = _labels(rows)
    return {
        "field": field_name,
        "groups": {
            value: {"n_items": len({r.item_id for r in members}),
                    "scorers": {label: {k: v for k, v in scorer_stats(members, label).items()
                                        if k in ("mean", "ci_low", "ci_high", "pass_rate",
                                                 "n_items", "n_scored")}
                                for label in labels}}
            for value, members in sorted(groups.items())
        },
    }


def experiment_report(experiment_id: int, by: str | None = None) -> dict[str, Any]:
    """Everything `evalq report --json` prints for one experiment."""
    exp, dataset, rows = load_items(experiment_id)
    return build_report(exp, dataset, rows, by=by)


def build_report(exp: Experiment, dataset: Dataset | None, rows: list[ItemRow],
                 by: str | None = None) -> dict[str, Any]:
    """The report dict from loaded rows."""
    done = [r for r in rows if r.status == ResultStatus.OK]
    failed = [r for r in rows if r.status == ResultStatus.ERROR]
    skipped = [r for r in rows if r.status == ResultStatus.SKIPPED_BUDGET]
    finished = done + failed
    latencies = [r.latency_ms for r in done if r.latency_ms is not None]
    target_cost = sum(r.cost_usd for r in finished)
    judge_cost = sum(s.get("judge_cost_usd") or 0.0 for r in rows for s in r.scores.values())
    prompt_tokens = sum(r.prompt_tokens for r in finished)
    completion_tokens = sum(r.completion_tokens for r in finished)
    report: dict[str, Any] = {
        "experiment_id": exp.id, "name": exp.name, "status": exp.status, "mode": exp.mode,
        "model": exp.model, "target": exp.target,
        "dataset": {"id": exp.dataset_id, "name": dataset.name if dataset else None,
                    "version": dataset.version if dataset else None},
        "repeats": exp.repeats,
        "counts": {"total": exp.total_items, "done": len(done), "failed": len(failed),
                   "skipped_budget": len(skipped),
                   "pending": max(0, exp.total_items - len(finished) - len(skipped))},
        "budget_usd": exp.max_cost_usd,
        "scorers": {label: scorer_stats(rows, label) for label in _labels(rows)},
        "latency_ms": {"p50": _r(percentile(latencies, 50), 3),
                       "p95": _r(percentile(latencies, 95), 3),
                       "p99": _r(percentile(latencies, 99), 3),
                       "mean": _r(statistics.fmean(latencies), 3) if latencies else None},
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens,
                   "total": prompt_tokens + completion_tokens},
        "cost_usd": {"target": round(target_cost, 8), "judge": round(judge_cost, 8),
                     "total": round(target_cost + judge_cost, 8),
                     "results_without_price": sum(1 for r in finished if not r.cost_known)},
        "attempts": {"total": sum(r.attempts for r in finished),
                     "retried_results": sum(1 for r in finished if r.attempts > 1)},
        "cache": {"hits": sum(1 for r in finished if r.cached)},
        "errors": dict(Counter(r.error_type or "error" for r in failed)),
        "created_at": exp.created_at.isoformat() if exp.created_at else None,
        **timing(exp, rows),
        "error": exp.error,
    }
    if by:
        report["by"] = breakdown(rows, by)
    return report


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _speed(items: int, start: datetime | None, end: datetime | None) -> tuple[float | None,
                                                                              float | None]:
    """(seconds from start to end, items per second), None where unknown."""
    if start is None or end is None:
        return None, None
    seconds = max(0.0, (end - start).total_seconds())
    return round(seconds, 3), (round(items / seconds, 3) if seconds else None)


def timing(exp: Experiment, rows: list[ItemRow]) -> dict[str, Any]:
    """When the experiment ran, from its first start to its finish (the whole span, over
    every run of it: a resume or rerun included), and the last re-run's own span.

    started_at: the first start; finished_at: the last finish; wall_time_s: from one to
    the other; items_per_s: finished (item, repeat)s (done + failed) over wall_time_s.
    last_run: None if the experiment was started once; after a resume or a rerun, its
    started_at (the restart), wall_time_s (restart to finish), items (the (item, repeat)s
    it ran: Results written since the restart, done or failed) and items_per_s."""
    first = exp.first_started_at or exp.started_at
    finished = [r for r in rows if r.status in (ResultStatus.OK, ResultStatus.ERROR)]
    wall, rate = _speed(len(finished), first, exp.finished_at)
    out: dict[str, Any] = {"started_at": _iso(first), "finished_at": _iso(exp.finished_at),
                           "wall_time_s": wall, "items_per_s": rate, "last_run": None}
    restart = exp.started_at
    if restart is not None and first is not None and restart > first:
        ran = sum(1 for r in finished if r.updated_at is not None and r.updated_at >= restart)
        run_wall, run_rate = _speed(ran, restart, exp.finished_at)
        out["last_run"] = {"started_at": _iso(restart), "wall_time_s": run_wall,
                           "items": ran, "items_per_s": run_rate}
    return out
