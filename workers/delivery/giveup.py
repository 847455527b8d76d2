"""What a task does instead of running once its workers died on it too often.

A task whose worker died (crash, out of memory, SIGKILL) is sent again; one that kills
every worker that runs it must not circle forever. After EVALQ_MAX_TASK_ATTEMPTS starts,
its work is recorded as failed: each missing (item, repeat) gets an error Result, so the
experiment completes and the report says what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col

from models.claims import mark_claim_done
from models.crud import record_outcomes
from models.db import session_scope
from models.tables import Result, ResultCreate, TargetOutput, utcnow

log = logging.getLogger(__name__)


def _reason(attempts: int) -> str:
    return (f"evalq gave up: a worker died {attempts - 1} times while evaluating this item "
            "(crash, out of memory, or killed); see the worker logs, then "
            "`evalq rerun --failed` to try again (limit: EVALQ_MAX_TASK_ATTEMPTS)")


def offline_items(experiment_id: int, pairs: Sequence[Sequence[int]], attempts: int
                  ) -> dict[str, int]:
    """Store an error Result for each (item, repeat) of the chunk that has none."""
    todo = {(int(i), int(r)) for i, r in pairs}
    with session_scope() as session:
        have = set(session.execute(
            sa.select(col(Result.item_id), col(Result.repeat))
            .where(col(Result.experiment_id) == experiment_id,
                   col(Result.item_id).in_(sorted({i for i, _ in todo})))).all())
        missing = sorted(p for p in todo if (p[0], p[1]) not in have)
        outcome = TargetOutput(error=_reason(attempts), error_type="WorkerLost")
        record_outcomes(session=session, experiment_id=experiment_id,
                        outcomes=[(ResultCreate.of(experiment_id, i, r, outcome), [])
                                  for i, r in missing])
    log.error("experiment %s: %d item(s) stored as errors after %d starts of their task",
              experiment_id, len(missing), attempts)
    return {"error": len(missing), "skipped": len(todo) - len(missing)}


def online_claims(claim_ids: Sequence[int], attempts: int) -> dict[str, int]:
    """Close the claims unscored: they are not handed out again."""
    with session_scope() as session:
        for claim_id in claim_ids:
            mark_claim_done(session=session, claim_id=claim_id, now=utcnow())
    log.error("online claims %s closed unscored after %d starts of their task",
              list(claim_ids), attempts)
    return {"gave_up": len(claim_ids)}


def rescore(experiment_id: int, result_id: int, attempts: int) -> str:
    log.error("rescore of experiment %s result %s abandoned after %d starts",
              experiment_id, result_id, attempts)
    return "gave_up"
