"""Evaluating a chunk of (item, repeat)s in one task, the one offline execution path (the
Celery task `run_items` and embedded mode both call `execute_chunk`): the items' target
calls run together on the process's event loop (bounded by EVALQ_MODEL_CONCURRENCY per
worker process, EVALQ_CONCURRENCY embedded), each output is scored, and the chunk's
Results and Scores are written in one transaction.

Idempotent: an (item, repeat) that already has a Result is skipped unless forced, and every
write is an upsert on its unique key. A chunk of an experiment whose cost budget is spent
stores its items as skipped_budget without calling the target.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col

from models.crud import record_outcomes, spent_usd
from models.db import session_scope
from models.settings import Settings, get_settings
from models.tables import Result, ResultCreate, ResultStatus, ScoreBase, TargetOutput
from workers.offline import failfast
from workers.offline.execution import run_target
from workers.offline.plan import Case, ExperimentPlan, load_cases, load_plan
from workers.runtime import aio
from workers.scoring import assertion_scorers, sample_of, score_sample

_semaphores: dict[tuple[int, int], asyncio.Semaphore] = {}


def _limit(settings: Settings) -> asyncio.Semaphore:
    """The process-wide bound on concurrent target calls: EVALQ_CONCURRENCY in embedded
    mode, EVALQ_MODEL_CONCURRENCY in a worker process."""
    size = settings.concurrency if settings.embedded else settings.model_concurrency
    key = (os.getpid(), size)
    if key not in _semaphores:
        _semaphores[key] = asyncio.Semaphore(size)
    return _semaphores[key]


def _existing(experiment_id: int, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    items = sorted({i for i, _ in pairs})
    with session_scope() as session:
        rows = session.execute(
            sa.select(col(Result.item_id), col(Result.repeat))
            .where(col(Result.experiment_id) == experiment_id, col(Result.item_id).in_(items))
        ).all()
    return {(r[0], r[1]) for r in rows}


def _budget_spent(plan: ExperimentPlan) -> bool:
    if plan.max_cost_usd is None:
        return False
    with session_scope() as session:
        return spent_usd(session=session, experiment_id=plan.experiment_id) >= plan.max_cost_usd


async def evaluate(plan: ExperimentPlan, case: Case, settings: Settings, repeat: int = 0
                   ) -> tuple[TargetOutput, list[ScoreBase]]:
    """Call the target for one test case and score what it produced."""
    output = await run_target(plan, case, settings, repeat)
    if output.error is not None:
        return output, []
    sample = sample_of(output, input=case.input, expected=case.expected,
                       metadata=case.metadata, custom=case.custom())
    scorers = list(plan.scorers)
    if case.assertions:  # binding checks data (a schema, a pattern): not on the loop
        scorers += await aio.in_thread(assertion_scorers, case.assertions)
    return output, await score_sample(scorers, sample)


async def _evaluate_all(plan: ExperimentPlan, work: list[tuple[Case, int]],
                        settings: Settings) -> list[tuple[TargetOutput, list[ScoreBase]]]:
    limit = _limit(settings)

    async def one(case: Case, repeat: int) -> tuple[TargetOutput, list[ScoreBase]]:
        async with limit:
            return await evaluate(plan, case, settings, repeat)

    return list(await asyncio.gather(*(one(case, rep) for case, rep in work)))


def execute_chunk(experiment_id: int, pairs: Sequence[Sequence[int]], *, force: bool = False,
                  config_version: int = 0) -> dict[str, int]:
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
    plan = load_plan(experiment_id, config_version)
    cases = load_cases([i for i, _ in todo])
    work = [(cases[i], r) for i, r in todo]
    rows: list[tuple[ResultCreate, list[ScoreBase]]]
    if _budget_spent(plan):
        over = TargetOutput(error=f"skipped: the experiment's budget of "
                            f"${plan.max_cost_usd:g} is spent (--max-cost)",
                            error_type="BudgetExceeded")
        rows = [(ResultCreate.of(experiment_id, case.item_id, rep, over,
                                 ResultStatus.SKIPPED_BUDGET), []) for case, rep in work]
    else:
        outcomes = aio.run(_evaluate_all(plan, work, settings))
        rows = [(ResultCreate.of(experiment_id, case.item_id, rep, output), verdicts)
                for (case, rep), (output, verdicts) in zip(work, outcomes, strict=True)]
    with session_scope() as session:
        record_outcomes(session=session, experiment_id=experiment_id, outcomes=rows)
    if any(row.status == ResultStatus.ERROR.value for row, _ in rows):
        failfast.after_chunk(experiment_id)
    counts: dict[str, int] = {"skipped": skipped}
    for row, _ in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts
