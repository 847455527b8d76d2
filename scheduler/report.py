"""Experiment reports: computed from the database rows, as a dict (the --json form)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from models.crud import get_experiment
from models.db import session_scope
from models.tables import Dataset, Result, ResultStatus, Score


def percentile(values: list[float], pct: float) -> float | None:
    """Linear-interpolated percentile (the 'inclusive' method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]


def _scorer_stats(session: Session, experiment_id: int) -> dict[str, dict[str, Any]]:
    passed = sa.func.sum(sa.case((col(Score.passed).is_(True), 1), else_=0))
    rows = session.execute(
        sa.select(  # type: ignore[call-overload]
            Score.scorer, sa.func.count(col(Score.value)), sa.func.avg(Score.value),
            passed, sa.func.count(),
        )
        .where(col(Score.experiment_id) == experiment_id)
        .group_by(Score.scorer)
        .order_by(Score.scorer)
    ).all()
    stats: dict[str, dict[str, Any]] = {}
    for label, n_scored, mean, n_passed, n_all in rows:
        stats[label] = {
            "mean": None if mean is None else round(float(mean), 6),
            "pass_rate": round(n_passed / n_scored, 6) if n_scored else None,
            "n_scored": n_scored,
            "n_unscored": n_all - n_scored,
        }
    return stats


def experiment_report(experiment_id: int) -> dict[str, Any]:
    """Everything `evalq report --json` prints for one experiment."""
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        dataset = session.get(Dataset, exp.dataset_id)
        results = session.execute(
            sa.select(  # type: ignore[call-overload]
                Result.status, Result.latency_ms, Result.error_type, Result.attempts,
                Result.cost_known, Result.prompt_tokens, Result.completion_tokens,
                Result.cost_usd,
            )
            .where(col(Result.experiment_id) == experiment_id)
        ).all()
        scorers = _scorer_stats(session, experiment_id)
        judge_cost = session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(Score.judge_cost_usd), 0.0))
            .where(col(Score.experiment_id) == experiment_id)
        ).scalar_one()
    done = sum(1 for r in results if r[0] == ResultStatus.OK)
    failed = sum(1 for r in results if r[0] == ResultStatus.ERROR)
    latencies = [r[1] for r in results if r[0] == ResultStatus.OK and r[1] is not None]
    prompt_tokens = sum(r[5] for r in results)
    completion_tokens = sum(r[6] for r in results)
    target_cost = float(sum(r[7] for r in results))
    wall = (
        (exp.finished_at - exp.started_at).total_seconds()
        if exp.finished_at and exp.started_at else None
    )
    return {
        "experiment_id": exp.id,
        "name": exp.name,
        "status": exp.status,
        "mode": exp.mode,
        "model": exp.model,
        "dataset": {"id": exp.dataset_id, "name": dataset.name if dataset else None,
                    "version": dataset.version if dataset else None},
        "repeats": exp.repeats,
        "counts": {"total": exp.total_items, "done": done, "failed": failed,
                   "pending": max(0, exp.total_items - done - failed)},
        "scorers": scorers,
        "latency_ms": {
            "p50": _round(percentile(latencies, 50)),
            "p95": _round(percentile(latencies, 95)),
            "mean": _round(statistics.fmean(latencies)) if latencies else None,
        },
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens,
                   "total": prompt_tokens + completion_tokens},
        "cost_usd": {"target": round(target_cost, 8), "judge": round(judge_cost, 8),
                     "total": round(target_cost + judge_cost, 8),
                     "results_without_price": sum(1 for r in results if not r[4])},
        "attempts": {"total": sum(r[3] for r in results),
                     "retried_results": sum(1 for r in results if r[3] > 1)},
        "errors": dict(Counter(r[2] for r in results if r[0] == ResultStatus.ERROR)),
        "created_at": exp.created_at.isoformat() if exp.created_at else None,
        "finished_at": exp.finished_at.isoformat() if exp.finished_at else None,
        "wall_time_s": round(wall, 3) if wall is not None else None,
        "error": exp.error,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
