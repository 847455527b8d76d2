"""Online scoring: the tick that claims sampled production runs, and scoring one claim.

Plain functions, called by the Celery tasks (distributed) or in-process (embedded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlmodel import Session

from models.claims import Claimed, claim_batch, due_evaluator_ids, mark_claim_done
from models.db import session_scope
from models.leases import insert_leases
from models.settings import get_settings
from models.tables import (
    ClaimStatus,
    OnlineClaim,
    OnlineEvaluator,
    ProductionRun,
    SubjectType,
    utcnow,
)
from workers.delivery.queues import queue_of
from workers.offline.execution import run_scorer
from workers.runtime import aio
from workers.scorers import Sample, rebind

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
        from workers.online.alerts import check_alerts

        check_alerts(evaluator_id)
    except Exception:  # noqa: BLE001 - alerting must never stop scoring
        log.exception("alert check of evaluator %s failed", evaluator_id)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def run_sample(run: ProductionRun) -> Sample:
    """What scorers see of a production run."""
    meta = dict(run.meta or {})
    meta.update(source=run.source, model=run.model, plan=run.plan)
    return Sample(
        input=run.input, expected=meta.get("expected"), output=_text(run.output),
        metadata=meta, tool_calls=run.tool_calls, latency_ms=run.latency_ms,
        cost_usd=run.cost_usd, outcome=run.status, steps=run.steps,
    )


def score_claim(claim_id: int) -> str:
    """Score one claimed (evaluator, run) and mark it done. Idempotent: a claim already
    done is skipped; a second run of the same claim upserts the same Score rows."""
    with session_scope() as session:
        claim = session.get(OnlineClaim, claim_id)
        if claim is None or claim.status == ClaimStatus.DONE:
            return "skipped"
        evaluator = session.get(OnlineEvaluator, claim.evaluator_id)
        run = session.get(ProductionRun, claim.run_id)
        if evaluator is None or run is None:
            return "skipped"  # removed meanwhile
        scorers = [rebind(spec) for spec in evaluator.scorers or []]
        sample = run_sample(run)
        evaluator_id, run_id, subject_at = evaluator.id, run.id, run.created_at

    async def score_all() -> list[dict[str, Any]]:
        return [await run_scorer(s, sample) for s in scorers]

    rows = aio.run(score_all())
    from models.crud import upsert_scores

    with session_scope() as session:
        upsert_scores(session=session, scores_in=[
            {**row, "subject_type": SubjectType.RUN.value, "subject_id": run_id,
             "evaluator_id": evaluator_id, "subject_at": subject_at, "experiment_id": None}
            for row in rows
        ])
        mark_claim_done(session=session, claim_id=claim_id, now=utcnow())
    return "scored"


SCORE_CHUNK = 50


def tick_and_enqueue(app: Any = None, *, evaluator_ids: list[int] | None = None,
                     force: bool = False) -> int:
    """One tick, then the claimed runs sent to the workers as evalq.score_runs chunks of
    SCORE_CHUNK, each with a lease written in the claim's own transaction (a tick killed
    after claiming loses nothing). Returns how many runs were claimed. (`app` is unused,
    kept for callers that pass it.)"""
    from workers.delivery.dispatch import publish

    staged: list[tuple[list[int], list[list[int]]]] = []

    def stage(session: Session, claim_ids: list[int]) -> None:
        chunks = [claim_ids[i:i + SCORE_CHUNK] for i in range(0, len(claim_ids), SCORE_CHUNK)]
        rows: list[dict[str, Any]] = [
            {"task": "evalq.score_runs", "queue": queue_of("evalq.score_runs"),
             "task_args": [chunk], "task_kwargs": {}, "experiment_id": None}
            for chunk in chunks]
        staged.append((insert_leases(session=session, rows=rows, now=utcnow()), chunks))

    claimed: list[int] = []
    tick(evaluator_ids=evaluator_ids, force=force, enqueue=claimed.append, stage=stage)
    for lease_ids, chunks in staged:
        publish(lease_ids, "evalq.score_runs", [[chunk] for chunk in chunks],
                [{}] * len(chunks))
    return len(claimed)


def score_claims(claim_ids: list[int]) -> dict[str, int]:
    """Score several claims at once (judge calls overlap); each is idempotent on its own."""
    from concurrent.futures import ThreadPoolExecutor

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(claim_ids)))) as pool:
        for status in pool.map(score_claim, claim_ids):
            counts[status] = counts.get(status, 0) + 1
    return counts
