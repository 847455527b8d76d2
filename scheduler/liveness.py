"""Who is doing the work: live workers, what they hold, what waits in the queues.

Read from the database (worker heartbeats and task leases, models/leases.py) and, for
queue depths only, from the broker. Shared by `evalq workers`, `evalq status` and the
no-worker warning of `wait_for_experiment`; the CLI only renders. Queue names come from
workers.delivery.queues.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from models.db import session_scope
from models.leases import LeaseState, TaskLease, WorkerBeat, live_workers
from models.migrate import ensure_migrated
from models.settings import get_settings
from models.tables import utcnow
from workers.celery_app import app as celery_app
from workers.delivery.broker import queue_depths
from workers.delivery.queues import ALL_QUEUES, Queue

RECENT_S = 3600.0  # `evalq workers` lists workers gone within this long
EMBEDDED_MESSAGE = ("no workers in embedded mode (no EVALQ_BROKER_URL): tasks run in the "
                    "`evalq` process that started them")


def offline_queue() -> str:
    """The queue of an experiment's tasks (evalq.run_items, evalq.rescore_result)."""
    return Queue.OFFLINE.value


def all_queues() -> list[str]:
    return [q.value for q in Queue]


def worker_command() -> str:
    return f"celery -A workers worker --queues {ALL_QUEUES}"


def queues_of(worker: WorkerBeat) -> list[str]:
    """The queues a worker consumes, from its comma-separated heartbeat column."""
    return [q for q in (worker.queues or "").split(",") if q]


# One worker as `evalq workers` shows it: its heartbeat row and what it holds.
@dataclass(frozen=True)
class WorkerInfo:
    beat: WorkerBeat
    state: str  # "live", "stopped" (a clean shutdown) or "dead" (no heartbeat)
    held: int  # running leases it owns
    experiments: dict[int, int] = field(default_factory=dict)  # experiment id -> tasks held

    def as_dict(self, now: datetime) -> dict[str, Any]:
        b = self.beat
        return {
            "name": b.name, "hostname": b.hostname, "pid": b.pid, "queues": queues_of(b),
            "concurrency": b.concurrency, "state": self.state,
            "started_at": b.started_at.isoformat(), "seen_at": b.seen_at.isoformat(),
            "stopped_at": b.stopped_at.isoformat() if b.stopped_at else None,
            "seen_s_ago": round(max(0.0, (now - b.seen_at).total_seconds()), 1),
            "held": self.held,
            "experiments": [{"experiment_id": k, "tasks": v}
                            for k, v in sorted(self.experiments.items())],
        }


# What `evalq workers` reports: live workers, and those gone within RECENT_S.
@dataclass(frozen=True)
class WorkersOverview:
    mode: str  # "distributed" or "embedded"
    now: datetime
    dead_after_s: float
    live: list[WorkerInfo]
    gone: list[WorkerInfo]
    message: str | None = None  # embedded mode: why there is nothing to list

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "checked_at": self.now.isoformat(),
                "dead_after_s": self.dead_after_s, "message": self.message,
                "live": [w.as_dict(self.now) for w in self.live],
                "gone": [w.as_dict(self.now) for w in self.gone]}


def _held_by_experiment(*, session: Session, owners: list[str] | None = None
                        ) -> dict[str, dict[int, int]]:
    """Running leases: {owner: {experiment id (0: none): tasks}}."""
    stmt = (sa.select(col(TaskLease.owner), col(TaskLease.experiment_id), sa.func.count())
            .where(col(TaskLease.state) == LeaseState.RUNNING,
                   col(TaskLease.owner).is_not(None))
            .group_by(col(TaskLease.owner), col(TaskLease.experiment_id)))
    if owners is not None:
        stmt = stmt.where(col(TaskLease.owner).in_(owners))
    held: dict[str, dict[int, int]] = {}
    for owner, experiment_id, n in session.execute(stmt).all():
        held.setdefault(owner, {})[int(experiment_id or 0)] = int(n)
    return held


def _info(beat: WorkerBeat, state: str, held: dict[str, dict[int, int]]) -> WorkerInfo:
    mine = held.get(beat.name, {})
    return WorkerInfo(beat=beat, state=state, held=sum(mine.values()),
                      experiments={k: v for k, v in mine.items() if k})


def workers_overview(*, now: datetime | None = None, recent_s: float = RECENT_S
                     ) -> WorkersOverview:
    """Live workers and those stopped or dead within `recent_s`, with the tasks each
    holds. Embedded mode has none. Raises DatabaseNotMigrated on a database without
    evalq's schema."""
    settings = get_settings()
    now = now or utcnow()
    dead_after = settings.worker_dead_after_s
    if settings.embedded:
        return WorkersOverview("embedded", now, dead_after, [], [], EMBEDDED_MESSAGE)
    ensure_migrated()
    with session_scope() as session:
        live = live_workers(session=session, now=now, dead_after_s=dead_after)
        names = {w.name for w in live}
        recent = [w for w in session.execute(
            sa.select(WorkerBeat).where(col(WorkerBeat.seen_at) >= now - timedelta(
                seconds=recent_s)).order_by(col(WorkerBeat.seen_at).desc())).scalars().all()
            if w.name not in names]
        held = _held_by_experiment(session=session)
    return WorkersOverview(
        "distributed", now, dead_after,
        live=[_info(w, "live", held) for w in live],
        gone=[_info(w, "stopped" if w.stopped_at else "dead", held) for w in recent])


def consumers_of(queue: str | None = None, *, session: Session | None = None,
                 now: datetime | None = None) -> list[WorkerBeat]:
    """Live workers (a heartbeat younger than EVALQ_WORKER_DEAD_AFTER_S, not stopped)
    that consume `queue` (default: the offline queue)."""
    queue = queue or offline_queue()
    if session is None:
        with session_scope() as own:
            return consumers_of(queue, session=own, now=now)
    live = live_workers(session=session, now=now or utcnow(),
                        dead_after_s=get_settings().worker_dead_after_s)
    return [w for w in live if queue in queues_of(w)]


def experiment_leases(*, session: Session, experiment_id: int) -> dict[str, int]:
    """The experiment's leases by state: {"queued": n, "running": n}."""
    rows = session.execute(
        sa.select(col(TaskLease.state), sa.func.count())
        .where(col(TaskLease.experiment_id) == experiment_id)
        .group_by(col(TaskLease.state))).all()
    counts = {LeaseState.QUEUED: 0, LeaseState.RUNNING: 0}
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def no_worker_warning(*, queue: str, live: list[WorkerBeat], dead_after_s: float,
                      experiment_id: int | None = None, items: int | None = None,
                      tasks: int | None = None) -> str | None:
    """What to tell someone waiting on `queue` when no live worker consumes it (None
    when one does). `live`: every live worker; `items`/`tasks`: what waits."""
    if any(queue in queues_of(w) for w in live):
        return None
    if live:
        others = sorted({q for w in live for q in queues_of(w)})
        why = (f"{len(live)} live worker{'s' if len(live) != 1 else ''}, consuming "
               f"{', '.join(others) or 'no queue'} only")
    else:
        why = f"none has sent a heartbeat in the last {dead_after_s:g} s"
    waiting = "the tasks wait for a worker"
    if items is not None:
        what = f"{items} item{'s' if items != 1 else ''}"
        if tasks:
            what += f" ({tasks} task{'s' if tasks != 1 else ''} queued)"
        owner = f"experiment {experiment_id}'s " if experiment_id is not None else "the "
        waiting = f"{owner}{what} wait for a worker"
    return (f"no evalq worker is consuming {queue} ({why}): start one with "
            f"`{worker_command()}` (see README \"Distributed mode\"); {waiting}")


class NoWorkerWatch:
    """For someone waiting on an experiment: checks at once, then every `every_s`, that a
    live worker consumes the experiment's queue, and gives the warning (once) when none
    does at a check `grace_s` or more after the wait began (a worker that is starting
    has that long to send its first heartbeat). Cheap: two small queries per check."""

    def __init__(self, experiment_id: int, *, queue: str | None = None, grace_s: float = 5.0,
                 every_s: float = 2.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.experiment_id = experiment_id
        self.queue = queue or offline_queue()
        self.grace_s, self.every_s, self.clock = grace_s, every_s, clock
        self.started = clock()
        self.next_check = self.started
        self.warned = False
        self.consumers: list[WorkerBeat] | None = None  # as of the last check

    def check(self, state: dict[str, Any]) -> str | None:
        """The warning, the first time it applies; else None. `state`: `progress()`."""
        now = self.clock()
        if self.warned or now < self.next_check or not state.get("pending"):
            return None
        self.next_check = now + self.every_s
        settings = get_settings()
        try:
            with session_scope() as session:
                live = live_workers(session=session, now=utcnow(),
                                    dead_after_s=settings.worker_dead_after_s)
                self.consumers = [w for w in live if self.queue in queues_of(w)]
                if self.consumers or now - self.started < self.grace_s:
                    return None
                queued = experiment_leases(session=session,
                                           experiment_id=self.experiment_id)[LeaseState.QUEUED]
        except SQLAlchemyError:
            return None  # the wait's own progress query reports a database that is down
        message = no_worker_warning(queue=self.queue, live=live,
                                    dead_after_s=settings.worker_dead_after_s,
                                    experiment_id=self.experiment_id,
                                    items=int(state["pending"]), tasks=queued)
        self.warned = message is not None
        return message


def experiment_liveness(experiment_id: int, *, pending: int = 0) -> dict[str, Any]:
    """What `evalq status` adds in distributed mode: messages waiting in each evalq queue
    ({queue: n or None when the broker did not say}), the experiment's leases by state,
    live workers and those holding the experiment's work, and the no-worker warning when
    `pending` items wait and no live worker consumes the offline queue. Embedded mode:
    the same keys, None."""
    settings = get_settings()
    if settings.embedded:
        return {"mode": "embedded", "queues": None, "leases": None, "workers": None,
                "warning": None}
    queue = offline_queue()
    depths = queue_depths(celery_app, all_queues())
    with session_scope() as session:
        live = live_workers(session=session, now=utcnow(),
                            dead_after_s=settings.worker_dead_after_s)
        leases = experiment_leases(session=session, experiment_id=experiment_id)
        held = _held_by_experiment(session=session, owners=[w.name for w in live])
    holding = [{"name": w.name, "tasks": held[w.name][experiment_id]} for w in live
               if held.get(w.name, {}).get(experiment_id)]
    warning = None
    if pending:
        warning = no_worker_warning(queue=queue, live=live,
                                    dead_after_s=settings.worker_dead_after_s,
                                    experiment_id=experiment_id, items=pending,
                                    tasks=leases[LeaseState.QUEUED])
    return {
        "mode": "distributed", "queues": depths, "leases": leases,
        "workers": {"live": len(live), "queue": queue,
                    "consuming": [w.name for w in live if queue in queues_of(w)],
                    "holding": holding},
        "warning": warning,
    }
