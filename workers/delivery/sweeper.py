"""Finding lost work and sending it again: the database decides what is done.

Every sent task has a lease (models/leases.py). Each live worker's heartbeat thread runs
this sweep every few seconds; a lease is sent again when

1. **its worker died**: it is `running` and its owner's heartbeat is older than
   EVALQ_WORKER_DEAD_AFTER_S (or the owner stopped). A sweeper judges others dead only
   after its own heartbeat has been healthy that long, so a database outage, which stops
   every heartbeat at once, does not make live workers look dead;
2. **it was never published**: the producer died between writing the lease and sending
   the message (`evalq run` killed mid-enqueue);
3. **the broker lost its message**: its queue was seen empty after the lease was sent,
   and one sweep later (at least GRACE_S) no worker has claimed it. A message that left
   an empty queue was delivered (and a live worker claims it within milliseconds) or was
   lost: taken by a consumer killed before it recorded the delivery (Redis' BRPOP),
   or dropped by a broker restarted without persistence.

Re-sending is a conditional update, so of several sweepers exactly one sends. A copy of
a task that was only slow finds its lease held (and does nothing) or its work done.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from models.crud import missing_results
from models.db import session_scope
from models.leases import (
    LeaseState,
    TaskLease,
    forget_workers,
    orphaned_leases,
    take_for_resend,
    unsent_leases,
    waiting_leases,
)
from models.settings import get_settings
from models.tables import Experiment, ExperimentStatus, Result, utcnow
from workers.celery_app import app
from workers.delivery.broker import queue_depths
from workers.delivery.dispatch import publish, send_by_name
from workers.delivery.queues import Queue

log = logging.getLogger(__name__)
GRACE_S = 5.0  # a delivered message is claimed well within this
UNSENT_AFTER_S = 20.0  # a producer publishes its messages well within this
FORGET_WORKERS_AFTER = timedelta(days=1)
LEASED_QUEUES = (Queue.OFFLINE.value, Queue.ONLINE.value)


class Sweeper:
    """One process's sweeper; it remembers the leases it suspects between sweeps."""

    def __init__(self) -> None:
        # queue -> (monotonic time seen empty, {lease id: sends} sent before that)
        self.suspects: dict[str, tuple[float, dict[int, int]]] = {}
        self.last_forget = 0.0

    def sweep(self, *, healthy_for_s: float) -> dict[str, int]:
        """One pass; returns how many leases were sent again, by reason."""
        settings = get_settings()
        resend: dict[str, list[TaskLease]] = {"dead worker": [], "unsent": [],
                                              "lost by broker": []}
        now = utcnow()
        with session_scope() as session:
            if healthy_for_s >= settings.worker_dead_after_s:
                for lease in orphaned_leases(session=session, now=now,
                                             dead_after_s=settings.worker_dead_after_s):
                    taken = take_for_resend(session=session, lease_id=lease.id or 0, now=now,
                                            expect={"state": LeaseState.RUNNING,
                                                    "owner": lease.owner})
                    if taken is not None:
                        resend["dead worker"].append(taken)
            for lease in unsent_leases(session=session,
                                       older_than=now - timedelta(seconds=UNSENT_AFTER_S)):
                taken = take_for_resend(session=session, lease_id=lease.id or 0, now=now,
                                        expect={"state": LeaseState.QUEUED, "sent_at": None,
                                                "sends": lease.sends})
                if taken is not None:
                    resend["unsent"].append(taken)
            for lease_id, sends in self._due_suspects():
                taken = take_for_resend(session=session, lease_id=lease_id, now=now,
                                        expect={"state": LeaseState.QUEUED, "sends": sends})
                if taken is not None:
                    resend["lost by broker"].append(taken)
            if time.monotonic() - self.last_forget > 3600:
                self.last_forget = time.monotonic()
                forget_workers(session=session, before=now - FORGET_WORKERS_AFTER)
        counts = {"unleased items": self._resume_unleased(now)}
        for reason, leases in resend.items():
            if leases:
                _send_again(leases)
                log.warning("sent %d task(s) again (%s): leases %s", len(leases), reason,
                            _ids(leases))
            counts[reason] = len(leases)
        self._watch_queues()
        return counts

    def _resume_unleased(self, now: datetime) -> int:
        """Running distributed experiments with missing Results, no lease at all and no
        Result for UNSENT_AFTER_S: their missing items are sent again (work sent before
        leases existed, or by hand). Returns how many (item, repeat)s were sent."""
        quiet = now - timedelta(seconds=UNSENT_AFTER_S)
        last = (sa.select(sa.func.max(Result.updated_at))
                .where(col(Result.experiment_id) == col(Experiment.id)).scalar_subquery())
        leased = sa.select(col(TaskLease.id)).where(
            col(TaskLease.experiment_id) == col(Experiment.id)).exists()
        sent = 0
        with session_scope() as session:
            stalled = session.execute(
                sa.select(col(Experiment.id), col(Experiment.config_version))
                .where(col(Experiment.status) == ExperimentStatus.RUNNING,
                       col(Experiment.mode) == "distributed",
                       col(Experiment.started_at) < quiet, ~leased,
                       sa.or_(last.is_(None), last < quiet))).all()
        for experiment_id, config in stalled:
            with session_scope() as session:
                pairs = missing_results(session=session, experiment_id=experiment_id)
            if not pairs:
                continue
            size = get_settings().chunk_size
            calls = [(experiment_id, [[i, r] for i, r in pairs[k:k + size]])
                     for k in range(0, len(pairs), size)]
            send_by_name("evalq.run_items", calls, kwargs={"config": config},
                         experiment_id=experiment_id)
            log.warning("experiment %s was running with %d items missing and no task in "
                        "flight: sent them again", experiment_id, len(pairs))
            sent += len(pairs)
        return sent

    def _due_suspects(self) -> list[tuple[int, int]]:
        due: list[tuple[int, int]] = []
        for queue, (seen_at, leases) in list(self.suspects.items()):
            if time.monotonic() - seen_at >= GRACE_S:
                due += list(leases.items())
                del self.suspects[queue]
        return due

    def _watch_queues(self) -> None:
        """Remember the published leases of each queue seen empty: any of them unclaimed a
        sweep later is lost."""
        watch = [q for q in LEASED_QUEUES if q not in self.suspects]
        if not watch:
            return
        empty = [q for q, n in queue_depths(app, watch).items() if n == 0]
        if not empty:
            return
        now = utcnow()
        with session_scope() as session:
            waiting = {q: waiting_leases(session=session, queue=q, sent_before=now)
                       for q in empty}
        # Seen empty again after the leases were read: each of them had left the queue.
        for queue, depth in queue_depths(app, [q for q in empty if waiting[q]]).items():
            if depth == 0:
                self.suspects[queue] = (time.monotonic(), waiting[queue])


def _ids(leases: list[TaskLease]) -> str:
    ids = [str(lease.id) for lease in leases[:10]]
    return ", ".join(ids) + (f" and {len(leases) - 10} more" if len(leases) > 10 else "")


def _send_again(leases: list[TaskLease]) -> None:
    by_task: dict[str, list[TaskLease]] = {}
    for lease in leases:
        by_task.setdefault(lease.task, []).append(lease)
    for task, group in by_task.items():
        publish([lease.id or 0 for lease in group], task,
                [lease.task_args or [] for lease in group],
                [lease.task_kwargs or {} for lease in group])


def sweep_now() -> dict[str, Any]:
    """One sweep in this process, judging dead workers at once (for `evalq` commands and
    tests; workers sweep by themselves)."""
    return Sweeper().sweep(healthy_for_s=float("inf"))
