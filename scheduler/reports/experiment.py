"""Experiment reports, computed from the database rows (the --json form).

Per scorer: mean, standard error, 95% confidence interval (Student's t), pass rate, how
many were scored, could not be scored, and items that failed; with repeats, the spread
of each item across its repeats. Latency percentiles, tokens, cost (target and judge),
wall time, throughput, and a breakdown by a metadata field.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
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


def scorer_stats(rows: list[ItemRow], label: str) -> dict[str, Any]:
    """Mean, standard error, 95% t interval, pass rate and counts of one scorer."""
    scored = [r.scores[label] for r in rows if label in r.scores]
    values = [s["value"] for s in scored if s["value"] is not None]
    mean, low, high = mean_ci(values)
    if low is not None and high is not None:  # scores live in [0, 1]
        low, high = max(0.0, low), min(1.0, high)
    stderr = (statistics.stdev(values) / math.sqrt(len(values))) if len(values) > 1 else None
    passed = sum(1 for s in scored if s["value"] is not None and s["passed"])
    out: dict[str, Any] = {
        "mean": _r(mean), "stderr": _r(stderr), "ci_low": _r(low), "ci_high": _r(high),
        "ci_method": "t", "pass_rate": _r(passed / len(values)) if values else None,
        "n_scored": len(values), "n_unscored": len(scored) - len(values),
        "n_failed_items": sum(1 for r in rows if r.status == ResultStatus.ERROR),
    }
    per_item: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        value = r.scores.get(label, {}).get("value")
        if value is not None:
            per_item[r.item_id].append(value)
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
                                                 "n_scored")}
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
    wall = ((exp.finished_at - exp.started_at).total_seconds()
            if exp.finished_at and exp.started_at else None)
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
        "finished_at": exp.finished_at.isoformat() if exp.finished_at else None,
        "wall_time_s": round(wall, 3) if wall is not None else None,
        "items_per_s": round(len(finished) / wall, 3) if wall else None,
        "error": exp.error,
    }
    if by:
        report["by"] = breakdown(rows, by)
    return report
