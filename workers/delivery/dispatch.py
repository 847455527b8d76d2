"""Sending tasks to the broker with a lease each, so none can be lost unseen.

The lease rows are committed first (with `before_commit` work of the caller in the same
transaction), then the messages are published, then the leases are marked sent. A
producer killed anywhere in between leaves leases that the sweeper publishes; nothing is
lost and a task that runs twice finds its work done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from celery import Task
from sqlmodel import Session, col

from models.db import session_scope
from models.leases import TaskLease, insert_leases, mark_sent
from models.tables import utcnow
from workers.celery_app import app
from workers.celery_app import producer as broker_producer
from workers.delivery.queues import queue_of

_MARK_EVERY = 200


def publish(lease_ids: Sequence[int], task: str, calls: Sequence[Sequence[Any]],
            kwargs: Sequence[dict[str, Any]]) -> None:
    """Publish one message per lease (kwargs gain `lease`), marking them sent as it goes."""
    sent: list[int] = []
    with broker_producer() as producer:
        for lease_id, args, kw in zip(lease_ids, calls, kwargs, strict=True):
            app.send_task(task, args=list(args), kwargs={**kw, "lease": lease_id},
                          producer=producer)
            sent.append(lease_id)
            if len(sent) >= _MARK_EVERY:
                _mark(sent)
                sent = []
    if sent:
        _mark(sent)


def _mark(lease_ids: list[int]) -> None:
    with session_scope() as session:
        mark_sent(session=session, lease_ids=lease_ids, now=utcnow())


def send_tasks(task: Task, calls: Sequence[Sequence[Any]], *, kwargs: dict[str, Any] | None
               = None, experiment_id: int | None = None,
               before_commit: Callable[[Session], None] | None = None) -> list[int]:
    """Lease and send `task` (a task object of workers/tasks.py) once per argument list;
    returns the lease ids. The lease stores the task's name, from which the sweeper sends
    it again.

    `before_commit(session)` runs in the leases' transaction (e.g. marking the experiment
    running), so either both are stored or neither."""
    return send_by_name(task.name, calls, kwargs=kwargs, experiment_id=experiment_id,
                        before_commit=before_commit)


def send_by_name(name: str, calls: Sequence[Sequence[Any]], *, kwargs: dict[str, Any] | None
                 = None, experiment_id: int | None = None,
                 before_commit: Callable[[Session], None] | None = None) -> list[int]:
    """`send_tasks` for the task registered as `name`: for the sweeper, which knows tasks
    by the names in their leases and cannot import workers/tasks.py (that imports it)."""
    kw = dict(kwargs or {})
    queue = queue_of(name)
    rows = [{"task": name, "queue": queue, "task_args": list(args), "task_kwargs": kw,
             "experiment_id": experiment_id} for args in calls]
    with session_scope() as session:
        lease_ids = insert_leases(session=session, rows=rows, now=utcnow())
        if before_commit is not None:
            before_commit(session)
    publish(lease_ids, name, calls, [kw] * len(calls))
    return lease_ids


def forget_unsent(*, session: Session, experiment_id: int) -> int:
    """Drop an experiment's leases that were never published (its enqueue failed)."""
    gone = session.execute(sa.delete(TaskLease).where(
        col(TaskLease.experiment_id) == experiment_id, col(TaskLease.sent_at).is_(None)))
    return int(gone.rowcount or 0)  # type: ignore[attr-defined]
