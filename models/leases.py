"""Where every sent task is, according to the database: leases and worker heartbeats.

The broker moves work; the database records it. Every task evalq sends to a broker has a
TaskLease row, written before the message is published:

- `queued`: published (sent_at set) or about to be (sent_at NULL), waiting in a queue;
- `running`: a worker claimed it; that worker's WorkerBeat row must stay fresh;
- done: the row is deleted once the task's results are stored.

A lease whose worker stopped beating, a lease never published (the producer died), and a
lease whose message left an empty queue without anyone claiming it (a broker that lost
it) are sent again by the sweeper (workers/delivery/sweeper.py). A claim is one conditional
UPDATE, so a copy of a task whose lease a live worker holds is never run at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, col

from models.crud import dialect_insert
from models.tables import JSONType, utcnow
from models.types import UTCDateTime


class LeaseState:
    """Lifecycle of a TaskLease (a row that is done is deleted)."""

    QUEUED = "queued"  # sent (or about to be) to the broker, waiting for a worker
    RUNNING = "running"  # claimed by a worker (TaskLease.owner), which beats


# One worker process's liveness: written every EVALQ_HEARTBEAT_S seconds while it runs.
class WorkerBeat(SQLModel, table=True):
    __tablename__ = "worker_beat"

    name: str = Field(primary_key=True, max_length=300)  # celery node name + ":" + pid
    hostname: str = Field(max_length=255)
    pid: int
    queues: str = Field(default="", max_length=500)
    concurrency: int = 0
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    stopped_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# One sent task: what to send again if its message or its worker is lost.
class TaskLease(SQLModel, table=True):
    __tablename__ = "task_lease"
    __table_args__ = (sa.Index("ix_task_lease_state_queue", "state", "queue"),)

    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=100)  # the Celery task name
    queue: str = Field(max_length=100)
    task_args: list[Any] = Field(default_factory=list, sa_type=JSONType)  # ids only, never secrets
    task_kwargs: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    experiment_id: int | None = Field(default=None, index=True)
    state: str = Field(default=LeaseState.QUEUED, max_length=20)
    owner: str | None = Field(default=None, max_length=300, index=True)  # WorkerBeat.name
    attempts: int = 0  # claims: how many times a worker started it
    sends: int = 0  # publications: first send and every re-send
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # last publication
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- heartbeats -----------------------------------------------------------------------


def beat(*, session: Session, name: str, hostname: str, pid: int, queues: str,
         concurrency: int, now: datetime) -> None:
    """Record that worker `name` is alive at `now` (an upsert on its name)."""
    values = {"name": name, "hostname": hostname, "pid": pid, "queues": queues[:500],
              "concurrency": concurrency, "started_at": now, "seen_at": now,
              "stopped_at": None}
    stmt = dialect_insert(session, WorkerBeat).values(values)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["name"], set_={"seen_at": now, "stopped_at": None}))


def mark_stopped(*, session: Session, name: str, now: datetime) -> None:
    """A worker that shuts down cleanly says so: what it still holds is free at once."""
    session.execute(sa.update(WorkerBeat).where(col(WorkerBeat.name) == name)
                    .values(stopped_at=now, seen_at=now))


def _live_names(now: datetime, dead_after_s: float) -> Any:
    cutoff = now - timedelta(seconds=dead_after_s)
    return sa.select(col(WorkerBeat.name)).where(col(WorkerBeat.seen_at) >= cutoff,
                                                 col(WorkerBeat.stopped_at).is_(None))


def live_workers(*, session: Session, now: datetime, dead_after_s: float) -> list[WorkerBeat]:
    """Workers whose last heartbeat is younger than `dead_after_s`."""
    cutoff = now - timedelta(seconds=dead_after_s)
    return list(session.execute(
        sa.select(WorkerBeat).where(col(WorkerBeat.seen_at) >= cutoff,
                                    col(WorkerBeat.stopped_at).is_(None))
        .order_by(col(WorkerBeat.name))).scalars().all())


def forget_workers(*, session: Session, before: datetime) -> int:
    """Delete heartbeat rows of workers gone since before `before` and holding nothing."""
    held = sa.select(col(TaskLease.owner)).where(col(TaskLease.owner).is_not(None))
    gone = session.execute(
        sa.delete(WorkerBeat).where(col(WorkerBeat.seen_at) < before,
                                    col(WorkerBeat.name).not_in(held)))
    return int(gone.rowcount or 0)  # type: ignore[attr-defined]


def held_counts(*, session: Session) -> dict[str, int]:
    """Running leases by owner."""
    rows = session.execute(
        sa.select(col(TaskLease.owner), sa.func.count())
        .where(col(TaskLease.state) == LeaseState.RUNNING)
        .group_by(col(TaskLease.owner))).all()
    return {r[0]: int(r[1]) for r in rows if r[0] is not None}


# --- leases: producers ----------------------------------------------------------------


def insert_leases(*, session: Session, rows: Sequence[dict[str, Any]], now: datetime
                  ) -> list[int]:
    """New queued leases ({task, queue, args, kwargs, experiment_id}); their ids in order."""
    if not rows:
        return []
    values = [{**r, "state": LeaseState.QUEUED, "attempts": 0, "sends": 1,
               "created_at": now, "updated_at": now, "sent_at": None} for r in rows]
    ids: list[int] = []
    for start in range(0, len(values), 500):
        ids += [r[0] for r in session.execute(
            sa.insert(TaskLease).values(values[start:start + 500])
            .returning(col(TaskLease.id))).all()]
    return ids


def mark_sent(*, session: Session, lease_ids: Sequence[int], now: datetime) -> None:
    """The leases' messages are published."""
    for start in range(0, len(lease_ids), 1000):
        session.execute(sa.update(TaskLease)
                        .where(col(TaskLease.id).in_(list(lease_ids[start:start + 1000])))
                        .values(sent_at=now))


# --- leases: workers ------------------------------------------------------------------


def claim_lease(*, session: Session, lease_id: int, owner: str, now: datetime,
                dead_after_s: float) -> tuple[str, int]:
    """Take the lease for `owner` if nobody alive holds it.

    Returns ("claimed", attempts), ("held", 0) when a live worker runs it (this copy must
    not run), or ("gone", 0) when the lease is done (its row deleted)."""
    row = session.execute(
        sa.update(TaskLease)
        .where(col(TaskLease.id) == lease_id,
               sa.or_(col(TaskLease.owner).is_(None),
                      col(TaskLease.owner).not_in(_live_names(now, dead_after_s))))
        .values(state=LeaseState.RUNNING, owner=owner, attempts=TaskLease.attempts + 1,
                updated_at=now)
        .returning(col(TaskLease.attempts))
    ).first()
    if row is not None:
        return "claimed", int(row[0])
    exists = session.execute(sa.select(col(TaskLease.id))
                             .where(col(TaskLease.id) == lease_id)).first()
    return ("held", 0) if exists else ("gone", 0)


def finish_lease(*, session: Session, lease_id: int, owner: str | None = None) -> None:
    """The task is done: its lease row goes (only the holder's, when `owner` is given)."""
    stmt = sa.delete(TaskLease).where(col(TaskLease.id) == lease_id)
    if owner is not None:
        stmt = stmt.where(col(TaskLease.owner) == owner)
    session.execute(stmt)


def release_lease(*, session: Session, lease_id: int, owner: str, now: datetime,
                  sent_at: datetime | None) -> None:
    """The holder gives the lease back without finishing it: queued again, published at
    `sent_at` (a retry's message) or not published (None: the sweeper sends it)."""
    session.execute(
        sa.update(TaskLease)
        .where(col(TaskLease.id) == lease_id, col(TaskLease.owner) == owner)
        .values(state=LeaseState.QUEUED, owner=None, sent_at=sent_at, updated_at=now,
                sends=TaskLease.sends + (1 if sent_at is not None else 0)))


# --- leases: the sweeper --------------------------------------------------------------


def orphaned_leases(*, session: Session, now: datetime, dead_after_s: float,
                    limit: int = 1000) -> list[TaskLease]:
    """Running leases whose owner is not alive."""
    return list(session.execute(
        sa.select(TaskLease)
        .where(col(TaskLease.state) == LeaseState.RUNNING,
               col(TaskLease.owner).not_in(_live_names(now, dead_after_s)))
        .order_by(col(TaskLease.id)).limit(limit)).scalars().all())


def unsent_leases(*, session: Session, older_than: datetime, limit: int = 1000
                  ) -> list[TaskLease]:
    """Queued leases never published although written before `older_than`."""
    return list(session.execute(
        sa.select(TaskLease)
        .where(col(TaskLease.state) == LeaseState.QUEUED, col(TaskLease.sent_at).is_(None),
               col(TaskLease.updated_at) < older_than)
        .order_by(col(TaskLease.id)).limit(limit)).scalars().all())


def waiting_leases(*, session: Session, queue: str, sent_before: datetime) -> dict[int, int]:
    """Queued, published leases of `queue` sent before `sent_before`: {id: sends}."""
    rows = session.execute(
        sa.select(col(TaskLease.id), col(TaskLease.sends))
        .where(col(TaskLease.state) == LeaseState.QUEUED, col(TaskLease.queue) == queue,
               col(TaskLease.sent_at).is_not(None), col(TaskLease.sent_at) <= sent_before)
    ).all()
    return {int(r[0]): int(r[1]) for r in rows}


def take_for_resend(*, session: Session, lease_id: int, expect: dict[str, Any], now: datetime
                    ) -> TaskLease | None:
    """Move a lease back to queued-unsent if it is still as the sweeper saw it (`expect`:
    column values), so that of several sweepers exactly one sends it again."""
    stmt = (sa.update(TaskLease).where(col(TaskLease.id) == lease_id)
            .values(state=LeaseState.QUEUED, owner=None, sent_at=None, updated_at=now,
                    sends=TaskLease.sends + 1)
            .returning(TaskLease))
    for key, value in expect.items():
        column = getattr(TaskLease, key)
        stmt = stmt.where(column.is_(None) if value is None else column == value)
    row = session.execute(stmt).first()
    return row[0] if row is not None else None


def lease_counts(*, session: Session) -> dict[str, int]:
    """Leases by state, for `evalq status`."""
    rows = session.execute(sa.select(col(TaskLease.state), sa.func.count())
                           .group_by(col(TaskLease.state))).all()
    return {r[0]: int(r[1]) for r in rows}
