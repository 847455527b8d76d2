"""The online tick: claim the next sampled batch of every due online evaluator, and send the
claims to the workers in chunks, each with a lease written in the claim's own transaction.

Plain functions, called by the Celery task `online_tick` (distributed) or in-process
(embedded, `evalq online tick`). Scoring a claim is workers/online/claimed_runs.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from sqlmodel import Session

from models.claims import Claimed, claim_batch, due_evaluator_ids
from models.db import session_scope
from models.leases import insert_leases
from models.settings import get_settings
from models.tables import utcnow
from workers.delivery.dispatch import publish
from workers.delivery.queues import queue_of
from workers.online.alerts import check_alerts

log = logging.getLogger(__name__)


def tick(*, evaluator_ids: list[int] | None = None, force: bool = False,
         enqueue: Callable[[int], None],
         stage: Callable[[Session, list[int]], None] | None = None) -> list[Claimed]:
    """Claim the next batch of every due evaluator (or the given ones) and hand each claim
    id to `enqueue` after the claim committed. `stage(session, claim_ids)` runs inside the
    claim's transaction (leases for the claims' tasks). Safe to run concurrently."""
    settings = get_settings()
    now = utcnow()
    if evaluator_ids is None:
        with session_scope() as session:
            evaluator_ids = due_evaluator_ids(session=session, now=now, all_enabled=force)
    results = []
    for evaluator_id in evaluator_ids:
        with session_scope() as session:
            claimed = claim_batch(session=session, evaluator_id=evaluator_id, now=now,
                                  claim_timeout_s=settings.claim_timeout_s,
                                  settle_s=settings.ingest_settle_s, force=force)
            if claimed is not None and claimed.claim_ids and stage is not None:
                stage(session, claimed.claim_ids)
        if claimed is None:
            continue
        for claim_id in claimed.claim_ids:
            enqueue(claim_id)
        if claimed.claim_ids:
            log.info("online evaluator %s: %d runs claimed (%d again), %d examined",
                     evaluator_id, len(claimed.new), len(claimed.reclaimed), claimed.examined)
        results.append(claimed)
        _check_alerts(evaluator_id)
    return results


def _check_alerts(evaluator_id: int) -> None:
    try:
        check_alerts(evaluator_id)
    except Exception:  # noqa: BLE001 - alerting must never stop scoring
        log.exception("alert check of evaluator %s failed", evaluator_id)


SCORE_CHUNK = 50


def tick_and_enqueue(score_task: Task, *, evaluator_ids: list[int] | None = None,
                     force: bool = False) -> int:
    """One tick, then the claimed runs sent to the workers as `score_task` (the
    `score_runs` task) chunks of SCORE_CHUNK, each with a lease written in the claim's own
    transaction (a tick killed after claiming loses nothing). Returns how many runs were
    claimed."""
    staged: list[tuple[list[int], list[list[int]]]] = []

    def stage(session: Session, claim_ids: list[int]) -> None:
        chunks = [claim_ids[i:i + SCORE_CHUNK] for i in range(0, len(claim_ids), SCORE_CHUNK)]
        rows: list[dict[str, Any]] = [
            {"task": score_task.name, "queue": queue_of(score_task.name),
             "task_args": [chunk], "task_kwargs": {}, "experiment_id": None}
            for chunk in chunks]
        staged.append((insert_leases(session=session, rows=rows, now=utcnow()), chunks))

    claimed: list[int] = []
    tick(evaluator_ids=evaluator_ids, force=force, enqueue=claimed.append, stage=stage)
    for lease_ids, chunks in staged:
        publish(lease_ids, score_task.name, [[chunk] for chunk in chunks],
                [{}] * len(chunks))
    return len(claimed)
