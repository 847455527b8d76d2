"""Rescoring: run scorers added to a finished experiment on its stored outputs, without
calling the target again."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from models.crud import store_totals, upsert_scores
from models.db import session_scope
from models.tables import Experiment, Result, ResultStatus, Score, SubjectType
from workers.offline.execution import assertion_scorers, load_case, run_scorer
from workers.runtime import aio
from workers.scorers import Sample, rebind


def rescore_result(experiment_id: int, result_id: int) -> str:
    """Score one Result with every scorer of its experiment that has not scored it yet.
    Idempotent: a second run finds nothing missing."""
    with session_scope() as session:
        exp = session.get(Experiment, experiment_id)
        result = session.get(Result, result_id)
        if exp is None or result is None or result.status != ResultStatus.OK:
            return "skipped"
        have = set(session.exec(select(Score.scorer).where(
            Score.subject_type == SubjectType.RESULT, Score.subject_id == result_id)).all())
        specs = [s for s in exp.scorers or [] if s["label"] not in have]
        item_id = result.item_id
        stored: dict[str, Any] = {
            "output": result.output, "tool_calls": result.tool_calls,
            "latency_ms": result.latency_ms,
            "cost_usd": result.cost_usd if result.cost_known else None,
            "outcome": result.outcome, "steps": result.steps,
        }
    if not specs:
        return "skipped"
    case = load_case(item_id)
    scorers = [rebind(spec) for spec in specs]
    if not have:  # first scoring of this result: its assertions too
        scorers += assertion_scorers(case)
    sample = Sample(input=case.input, expected=case.expected, metadata=case.metadata,
                    custom=case.custom(), **stored)

    async def score_all() -> list[dict[str, Any]]:
        return [await run_scorer(s, sample) for s in scorers]

    rows = aio.run(score_all())
    with session_scope() as session:
        upsert_scores(session=session, scores_in=[
            {**row, "subject_id": result_id, "experiment_id": experiment_id} for row in rows
        ])
    return "scored"


def refresh_totals(experiment_id: int) -> None:
    """Recompute the experiment's stored cost and token totals (after a rescore)."""
    with session_scope() as session:
        store_totals(session=session, experiment_id=experiment_id)
