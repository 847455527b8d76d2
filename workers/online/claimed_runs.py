"""Scoring claimed production runs: each claim once, with its online evaluator's scorers.

Plain functions, called by the Celery task `score_runs` (distributed) or in-process
(embedded, `evalq online tick`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from models.aggregates import add_to_rollup
from models.claims import mark_claim_done
from models.crud import upsert_scores
from models.db import session_scope
from models.tables import (
    ClaimStatus,
    OnlineClaim,
    OnlineEvaluator,
    ProductionRun,
    ScoreCreate,
    SubjectType,
    utcnow,
)
from workers.runtime import aio
from workers.scorers import rebind
from workers.scoring import run_sample, score_sample


def score_claim(claim_id: int) -> str:
    """Score one claimed (evaluator, run) and mark it done. Idempotent: a claim already
    done is skipped; a second run of the same claim upserts the same Score rows."""
    with session_scope() as session:
        claim = session.get(OnlineClaim, claim_id)
        if claim is None or claim.status == ClaimStatus.DONE:
            return "skipped"
        evaluator = session.get(OnlineEvaluator, claim.evaluator_id)
        run = session.get(ProductionRun, claim.run_id)
        if evaluator is None or run is None or evaluator.id is None or run.id is None:
            return "skipped"  # removed meanwhile
        scorers = [rebind(spec) for spec in evaluator.scorers or []]
        sample = run_sample(run)
        evaluator_id, run_id, subject_at = evaluator.id, run.id, run.created_at
    verdicts = aio.run(score_sample(scorers, sample))
    with session_scope() as session:
        upsert_scores(session=session, scores_in=[
            ScoreCreate.of(v, subject_type=SubjectType.RUN, subject_id=run_id,
                           evaluator_id=evaluator_id, subject_at=subject_at)
            for v in verdicts])
        if mark_claim_done(session=session, claim_id=claim_id, now=utcnow()):
            # Only the scoring that closed the claim adds to the rollup: a replay adds
            # nothing (its Score rows, rewritten above, may then differ from the rollup).
            add_to_rollup(session=session, evaluator_id=evaluator_id, subject_at=subject_at,
                          scores=[(v.scorer, v.value, v.passed) for v in verdicts])
    return "scored"


def score_claims(claim_ids: list[int]) -> dict[str, int]:
    """Score several claims at once (judge calls overlap); each is idempotent on its own."""
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(claim_ids)))) as pool:
        for status in pool.map(score_claim, claim_ids):
            counts[status] = counts.get(status, 0) + 1
    return counts
