"""Running a task's work under its lease (models/leases.py), so no copy runs twice at once.

A task sent by evalq carries a lease id. `leased` claims the lease before the work (a copy
of a task that a live worker is running does nothing), releases it when the work fails (a
retry is then sent; a crash's lease is found by the sweeper), and finishes it when the
results are stored. After EVALQ_MAX_TASK_ATTEMPTS starts it gives up (workers/delivery/giveup.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from celery import Task
from sqlalchemy.exc import DBAPIError, OperationalError

from models.db import session_scope
from models.leases import claim_lease, finish_lease, release_lease
from models.settings import get_settings
from models.tables import utcnow
from workers.delivery import heartbeat

log = logging.getLogger(__name__)
R = TypeVar("R")

# The database may be briefly unreachable (restart, failover): worth another try.
DB_TRANSIENT = (OperationalError, DBAPIError)


def countdown(retries: int) -> float:
    # Stay well below the broker's visibility timeout, so a retry is never redelivered twice.
    return float(min(2 ** retries, 30, get_settings().visibility_timeout_s / 4))


class Held(Exception):
    """This copy of a task must not run: a live worker holds its lease, or it is done."""


def leased(task: Task, lease_id: int | None, work: Callable[[], R],
           give_up: Callable[[int], R]) -> R:
    """Run `work` holding the lease. Raises Held when this copy must not run; releases the
    lease when `work` fails (a retry is then sent; a crash's lease is found by the
    sweeper); calls `give_up(attempts)` instead of `work` once a task has been started
    more than EVALQ_MAX_TASK_ATTEMPTS times (its workers kept dying on it)."""
    if lease_id is None:  # sent by something else than evalq's dispatcher: no lease
        return work()
    settings = get_settings()
    hb = heartbeat.current()
    hb.flush_releases()
    with session_scope() as session:
        status, attempts = claim_lease(session=session, lease_id=lease_id, owner=hb.name,
                                       now=utcnow(), dead_after_s=settings.worker_dead_after_s)
    if status != "claimed":
        raise Held(f"lease {lease_id} is {'done' if status == 'gone' else 'held by a live worker'}")
    try:
        result = give_up(attempts) if attempts > settings.max_task_attempts else work()
    except DB_TRANSIENT:
        later = utcnow() + timedelta(seconds=countdown(task.request.retries))
        _release(hb, lease_id, later)
        raise
    except BaseException:
        _release(hb, lease_id, None)  # not sent: the sweeper sends it again
        raise
    with session_scope() as session:
        finish_lease(session=session, lease_id=lease_id, owner=hb.name)
    return result


def _release(hb: heartbeat.Heartbeat, lease_id: int, sent_at: Any) -> None:
    try:
        with session_scope() as session:
            release_lease(session=session, lease_id=lease_id, owner=hb.name, now=utcnow(),
                          sent_at=sent_at)
    except DB_TRANSIENT:
        hb.release_later(lease_id, hb.name, sent_at)


def run_leased(task: Task, lease: int | None, work: Callable[[], R], give_up: Callable[[int], R],
         idle: R, what: str) -> R:
    try:
        return leased(task, lease, work, give_up)
    except Held as held:
        log.info("%s: %s; this copy does nothing", what, held)
        return idle
    except DB_TRANSIENT as exc:
        log.warning("database error on %s: %s; retrying", what, type(exc).__name__)
        raise task.retry(exc=exc, countdown=countdown(task.request.retries)) from exc
