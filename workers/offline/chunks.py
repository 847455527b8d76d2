"""Evaluating a chunk of (item, repeat)s in one task: the items' model calls run together
on the process's event loop (bounded by EVALQ_MODEL_CONCURRENCY per process), and their
Results and Scores are written in one transaction.

One task per chunk instead of per item divides the broker, Celery and database work per
item by the chunk size; idempotency is unchanged (the same unique keys, the same skip of
(item, repeat)s that already have a Result).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from models.crud import record_outcomes
from models.db import session_scope
from models.settings import Settings, get_settings
from models.tables import DatasetItem, Result, ResultStatus
from workers.llm.calls import ModelOutcome
from workers.offline import failfast
from workers.offline.execution import (
    Case,
    Plan,
    _budget_spent,
    cache_case,
    evaluate,
    load_plan,
    result_row,
)
from workers.runtime import aio

_semaphores: dict[tuple[int, int], asyncio.Semaphore] = {}


def _limit(settings: Settings) -> asyncio.Semaphore:
    """The process-wide bound on concurrent target calls: EVALQ_CONCURRENCY in embedded
    mode, EVALQ_MODEL_CONCURRENCY in a worker process."""
    size = settings.concurrency if settings.embedded else settings.model_concurrency
    key = (os.getpid(), size)
    if key not in _semaphores:
        _semaphores[key] = asyncio.Semaphore(size)
    return _semaphores[key]


def load_cases(item_ids: Sequence[int]) -> dict[int, Case]:
    """Test cases by id, from the process cache or one query for the missing ones."""
    from workers.offline.execution import cached_case

    found = {i: c for i in item_ids if (c := cached_case(i)) is not None}
    missing = [i for i in item_ids if i not in found]
    if missing:
        with session_scope() as session:
            rows = session.execute(sa.select(DatasetItem)
                                   .where(col(DatasetItem.id).in_(missing))).scalars().all()
            for item in rows:
                assert item.id is not None
                found[item.id] = cache_case(item)
    return found


def _existing(experiment_id: int, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    items = sorted({i for i, _ in pairs})
    with session_scope() as session:
        rows = session.execute(
            sa.select(col(Result.item_id), col(Result.repeat))
            .where(col(Result.experiment_id) == experiment_id, col(Result.item_id).in_(items))
        ).all()
    return {(r[0], r[1]) for r in rows}


async def _evaluate_all(plan: Plan, work: list[tuple[Case, int]], settings: Settings
                        ) -> list[tuple[ModelOutcome, list[dict[str, Any]]]]:
    limit = _limit(settings)

    async def one(case: Case, repeat: int) -> tuple[ModelOutcome, list[dict[str, Any]]]:
        async with limit:
            return await evaluate(plan, case, settings, repeat)

    return list(await asyncio.gather(*(one(case, rep) for case, rep in work)))


def execute_chunk(experiment_id: int, pairs: Sequence[Sequence[int]], *, force: bool = False,
                  config: int = 0) -> dict[str, int]:
    """Evaluate and store a chunk of (item_id, repeat)s; returns counts by status (and
    "skipped" for pairs that already had a Result)."""
    settings = get_settings()
    todo = [(int(i), int(r)) for i, r in pairs]
    skipped = 0
    if not force:
        have = _existing(experiment_id, todo)
        skipped = sum(1 for p in todo if p in have)
        todo = [p for p in todo if p not in have]
    if not todo:
        return {"skipped": skipped}
    if failfast.experiment_stopped(experiment_id):
        return {"skipped": skipped, "stopped": len(todo)}
    plan = load_plan(experiment_id, config)
    cases = load_cases([i for i, _ in todo])
    work = [(cases[i], r) for i, r in todo]
    if plan.max_cost_usd is not None and _budget_spent(experiment_id, plan.max_cost_usd):
        over = ModelOutcome(error=f"skipped: the experiment's budget of "
                            f"${plan.max_cost_usd:g} is spent (--max-cost)",
                            error_type="BudgetExceeded")
        outcomes: list[tuple[ModelOutcome, list[dict[str, Any]]]] = [(over, [])] * len(work)
    else:
        outcomes = aio.run(_evaluate_all(plan, work, settings))
    rows = []
    for (case, rep), (outcome, scores) in zip(work, outcomes, strict=True):
        row = result_row(experiment_id, case.item_id, rep, outcome)
        if outcome.error_type == "BudgetExceeded":
            row["status"] = ResultStatus.SKIPPED_BUDGET.value
        rows.append((row, scores))
    with session_scope() as session:
        record_outcomes(session=session, experiment_id=experiment_id, outcomes=rows)
    if any(row["status"] == ResultStatus.ERROR.value for row, _ in rows):
        failfast.after_chunk(experiment_id)
    counts: dict[str, int] = {"skipped": skipped}
    for row, _ in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
