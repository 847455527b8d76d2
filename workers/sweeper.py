"""Recovering stalled experiments: tasks lost outside Redis' unacknowledged set.

kombu takes a message from Redis (BRPOP) and records it as unacknowledged in a second
round trip; a worker killed in between loses that message, and no visibility timeout
brings it back. Beat runs this sweep: a running experiment that has stored nothing for
longer than the visibility timeout (plus a minute) gets its missing (item, repeat)s
enqueued again. That is what `evalq resume` does by hand; a copy of a task that was only
slow is skipped or upserted, so nothing is doubled.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from models.crud import missing_results
from models.db import session_scope
from models.settings import get_settings
from models.tables import Experiment, ExperimentStatus, Result, utcnow

log = logging.getLogger(__name__)
SLACK = timedelta(seconds=60)


def stalled_experiments(*, now: datetime, quiet_for: timedelta) -> list[int]:
    """Running experiments whose last Result (or start) is older than `quiet_for`."""
    cutoff = now - quiet_for
    last = (sa.select(sa.func.max(Result.updated_at))
            .where(col(Result.experiment_id) == col(Experiment.id)).scalar_subquery())
    with session_scope() as session:
        rows = session.execute(
            sa.select(col(Experiment.id))
            .where(col(Experiment.status) == ExperimentStatus.RUNNING,
                   col(Experiment.mode) == "distributed",
                   col(Experiment.started_at) < cutoff,
                   sa.or_(last.is_(None), last < cutoff))
        ).all()
    return [r[0] for r in rows]


def sweep_stalled(app: Any, *, now: datetime | None = None,
                  quiet_for: timedelta | None = None) -> dict[int, int]:
    """Re-enqueue the missing (item, repeat)s of every stalled experiment; returns
    {experiment id: pairs enqueued}."""
    settings = get_settings()
    now = now or utcnow()
    if quiet_for is None:
        quiet_for = timedelta(seconds=settings.visibility_timeout_s) + SLACK
    swept: dict[int, int] = {}
    for experiment_id in stalled_experiments(now=now, quiet_for=quiet_for):
        with session_scope() as session:
            config = session.get(Experiment, experiment_id).config_version  # type: ignore[union-attr]
            pairs = missing_results(session=session, experiment_id=experiment_id)
        if not pairs:
            continue
        size = settings.chunk_size
        from workers.celery_app import producer as broker_producer

        with broker_producer() as producer:
            for start in range(0, len(pairs), size):
                chunk = [[i, r] for i, r in pairs[start:start + size]]
                app.send_task("evalq.run_items", args=(experiment_id, chunk),
                              kwargs={"config": config}, producer=producer)
        log.warning("experiment %s stored nothing for %s: %d missing items enqueued again",
                    experiment_id, quiet_for, len(pairs))
        swept[experiment_id] = len(pairs)
    return swept
