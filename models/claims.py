"""Online evaluators in the database: deterministic sampling and the atomic batch claim.

A tick locks the evaluator's row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN
IMMEDIATE locks the database), examines the runs after its watermark, samples them by a
hash of (evaluator, run), inserts one OnlineClaim per sampled run (unique on evaluator and
run) and moves the watermark, all in one transaction. Two overlapping ticks, or two beat
processes, therefore never claim the same run twice; a claim whose worker died is handed
out again after the claim timeout.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from models.aggregates import to_utc
from models.crud import dialect_insert
from models.tables import ClaimStatus, OnlineClaim, OnlineEvaluator, ProductionRun

RUN_COLUMNS = ("source", "status", "model")  # filter keys matched on columns; others: meta
MAX_EXAMINED = 50_000  # runs looked at per tick and evaluator, whatever the sample rate
CLAIM_UNNEST = """
INSERT INTO online_claim (evaluator_id, run_id, status, claimed_at, attempts)
SELECT :ev, run_id, :status, :now, 1 FROM unnest(CAST(:runs AS integer[])) AS run_id
ON CONFLICT (evaluator_id, run_id) DO NOTHING
RETURNING id
"""


def sample_point(evaluator: str, source: str, external_id: str) -> float:
    """A run's deterministic position in [0, 1) for one evaluator."""
    digest = hashlib.blake2b(f"{evaluator}\x00{source}\x00{external_id}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_sampled(evaluator: str, source: str, external_id: str, rate: float) -> bool:
    """Whether the evaluator samples this run: the same answer on every tick."""
    return rate >= 1.0 or sample_point(evaluator, source, external_id) < rate


def matches(filters: dict[str, Any] | None, meta: dict[str, Any] | None) -> bool:
    """Metadata filters (column filters are applied in SQL)."""
    for key, want in (filters or {}).items():
        if key in RUN_COLUMNS:
            continue
        if str((meta or {}).get(key)) != str(want):
            return False
    return True


@dataclass
class Claimed:
    """The outcome of one claim: claim ids to enqueue."""

    evaluator_id: int
    new: list[int]
    reclaimed: list[int]
    examined: int

    @property
    def claim_ids(self) -> list[int]:
        return self.new + self.reclaimed


def _lock_evaluator(session: Session, evaluator_id: int) -> OnlineEvaluator | None:
    stmt = sa.select(OnlineEvaluator).where(col(OnlineEvaluator.id) == evaluator_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.execute(stmt).scalar_one_or_none()


def _reclaim_stale(session: Session, evaluator_id: int, now: datetime, timeout_s: int
                   ) -> list[int]:
    cutoff = now - timedelta(seconds=timeout_s)
    rows = session.execute(
        sa.update(OnlineClaim)
        .where(col(OnlineClaim.evaluator_id) == evaluator_id,
               col(OnlineClaim.status) == ClaimStatus.CLAIMED,
               col(OnlineClaim.claimed_at) < cutoff)
        .values(claimed_at=now, attempts=OnlineClaim.attempts + 1)
        .returning(col(OnlineClaim.id))
    ).all()
    return [r[0] for r in rows]


def _candidates(session: Session, ev: OnlineEvaluator, settled_before: datetime, limit: int
                ) -> list[Any]:
    # The metadata (JSON, the costliest column to read back) only when a filter needs it.
    meta_filtered = any(key not in RUN_COLUMNS for key in ev.filters or {})
    meta = col(ProductionRun.meta) if meta_filtered else sa.null().label("meta")
    stmt = (
        sa.select(col(ProductionRun.id), col(ProductionRun.source),
                  col(ProductionRun.external_id), meta)
        .where(col(ProductionRun.id) > ev.watermark,
               col(ProductionRun.created_at) >= ev.since,
               col(ProductionRun.ingested_at) <= settled_before)
        .order_by(col(ProductionRun.id))
        .limit(limit)
    )
    for key in RUN_COLUMNS:
        if ev.filters and key in ev.filters:
            stmt = stmt.where(getattr(ProductionRun, key) == str(ev.filters[key]))
    return list(session.execute(stmt).all())


def claim_batch(*, session: Session, evaluator_id: int, now: datetime, claim_timeout_s: int,
                settle_s: float = 2.0, force: bool = False) -> Claimed | None:
    """Claim the evaluator's next batch if it is due (or `force`); None if not due.

    Runs ingested less than `settle_s` ago are left for the next tick, so a run whose
    insert committed after a higher id's cannot be skipped by the watermark. Stored times
    come back aware UTC on both databases (UTCDateTime); a naive `now` is taken as UTC."""
    now = to_utc(now)
    ev = _lock_evaluator(session, evaluator_id)
    if ev is None or not ev.enabled or (not force and ev.next_due_at > now):
        return None
    reclaimed = _reclaim_stale(session, evaluator_id, now, claim_timeout_s)
    limit = min(MAX_EXAMINED, max(ev.batch_size, math.ceil(2 * ev.batch_size /
                                                           max(ev.sample_rate, 1e-6))))
    runs = _candidates(session, ev, now - timedelta(seconds=settle_s), limit)
    picked: list[dict[str, Any]] = []
    watermark = ev.watermark
    for run_id, source, external_id, meta in runs:
        watermark = run_id
        if matches(ev.filters, meta) and is_sampled(ev.name, source, external_id,
                                                   ev.sample_rate):
            picked.append({"evaluator_id": evaluator_id, "run_id": run_id,
                           "status": ClaimStatus.CLAIMED.value, "claimed_at": now,
                           "attempts": 1})
            if len(picked) >= ev.batch_size:
                break
    new: list[int] = []
    if picked and session.get_bind().dialect.name == "postgresql":
        # One array parameter instead of 5 per row: no 1,000-row VALUES to compile/adapt.
        new = [r[0] for r in session.execute(
            sa.text(CLAIM_UNNEST),
            {"ev": evaluator_id, "runs": [p["run_id"] for p in picked],
             "status": ClaimStatus.CLAIMED.value, "now": now},
        ).all()]
    elif picked:
        # executemany: SQLAlchemy batches the rows into multi-row INSERTs itself
        # ("insertmanyvalues"), compiling the statement once instead of a 1,000-row VALUES.
        new = [r[0] for r in session.execute(
            dialect_insert(session, OnlineClaim)
            .on_conflict_do_nothing(index_elements=["evaluator_id", "run_id"])
            .returning(OnlineClaim.id),  # type: ignore[arg-type]
            picked,
        ).all()]
    session.execute(
        sa.update(OnlineEvaluator).where(col(OnlineEvaluator.id) == evaluator_id)
        .values(watermark=watermark, last_tick_at=now,
                next_due_at=now + timedelta(seconds=ev.every_s))
    )
    return Claimed(evaluator_id, new, reclaimed, len(runs))


def due_evaluator_ids(*, session: Session, now: datetime, all_enabled: bool = False
                      ) -> list[int]:
    """Enabled evaluators whose next tick is due (or every enabled one)."""
    stmt = sa.select(col(OnlineEvaluator.id)).where(col(OnlineEvaluator.enabled).is_(True))
    if not all_enabled:
        stmt = stmt.where(col(OnlineEvaluator.next_due_at) <= now)
    return [r[0] for r in session.execute(stmt.order_by(col(OnlineEvaluator.id))).all()]


def mark_claim_done(*, session: Session, claim_id: int, now: datetime) -> bool:
    """The claim's run is scored. True only for the call whose UPDATE moved the claim from
    claimed to done: a replayed or concurrent scoring of the same claim gets False (on
    PostgreSQL the second UPDATE waits for the first's commit, then matches no row)."""
    moved = session.execute(
        sa.update(OnlineClaim)
        .where(col(OnlineClaim.id) == claim_id,
               col(OnlineClaim.status) == ClaimStatus.CLAIMED)
        .values(status=ClaimStatus.DONE, done_at=now)
        .returning(col(OnlineClaim.id))
    ).first()
    return moved is not None
