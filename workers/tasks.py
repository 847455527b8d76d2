"""Celery tasks: thin wrappers that take ids and call plain functions.

Arguments are ids only (Flower shows task arguments): never prompts, never keys. Tasks
sent by evalq carry a `lease` (models/leases.py): the task claims it before working, so
a copy of a task that a live worker is running does nothing, and a task whose worker died
is sent again by the sweeper (workers/delivery/sweeper.py).
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
from workers.celery_app import app
from workers.delivery import giveup, heartbeat
from workers.offline.execution import execute_item

log = logging.getLogger(__name__)
R = TypeVar("R")

# The database may be briefly unreachable (restart, failover): worth another try.
DB_TRANSIENT = (OperationalError, DBAPIError)


def _countdown(retries: int) -> float:
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
        later = utcnow() + timedelta(seconds=_countdown(task.request.retries))
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


def _run(task: Task, lease: int | None, work: Callable[[], R], give_up: Callable[[int], R],
         idle: R, what: str) -> R:
    try:
        return leased(task, lease, work, give_up)
    except Held as held:
        log.info("%s: %s; this copy does nothing", what, held)
        return idle
    except DB_TRANSIENT as exc:
        log.warning("database error on %s: %s; retrying", what, type(exc).__name__)
        raise task.retry(exc=exc, countdown=_countdown(task.request.retries)) from exc


@app.task(name="evalq.online_tick", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=3)
def online_tick(self: Task) -> int:
    """Claim the next sampled batch of every due online evaluator; enqueue their scoring."""
    from workers.online.tick import tick_and_enqueue

    try:
        return tick_and_enqueue()
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


@app.task(name="evalq.score_runs", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def score_runs(self: Task, claim_ids: list[int], lease: int | None = None) -> dict[str, int]:
    """Score a chunk of claimed production runs (their scorers run together)."""
    from workers.online.tick import score_claims

    return _run(self, lease, lambda: score_claims(claim_ids),
                lambda attempts: giveup.online_claims(claim_ids, attempts), {"held": 1},
                f"online claims {claim_ids[:3]}...")


@app.task(name="evalq.score_run", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def score_run(self: Task, claim_id: int) -> str:
    """Score one claimed production run with its online evaluator's scorers."""
    from workers.online.tick import score_claim

    try:
        return score_claim(claim_id)
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


@app.task(name="evalq.rescore_result", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def rescore_result(self: Task, experiment_id: int, result_id: int, lease: int | None = None
                   ) -> str:
    """Score a stored Result with scorers added to its experiment (no target call)."""
    from workers.offline.rescore import rescore_result as rescore

    return _run(self, lease, lambda: rescore(experiment_id, result_id),
                lambda attempts: giveup.rescore(experiment_id, result_id, attempts), "held",
                f"rescore of result {result_id}")


@app.task(name="evalq.run_items", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def run_items(self: Task, experiment_id: int, pairs: list[list[int]], force: bool = False,
              config: int = 0, lease: int | None = None) -> dict[str, int]:
    """Evaluate a chunk of (dataset item, repeat)s of an experiment: the model calls run
    together, Results and Scores are stored in one transaction."""
    from workers.offline.chunks import execute_chunk

    return _run(self, lease, lambda: execute_chunk(experiment_id, pairs, force=force,
                                                   config=config),
                lambda attempts: giveup.offline_items(experiment_id, pairs, attempts),
                {"held": len(pairs)},
                f"experiment {experiment_id} chunk of {len(pairs)}")


@app.task(
    name="evalq.run_item",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=20,
)
def run_item(self: Task, experiment_id: int, item_id: int, repeat: int, force: bool = False,
             config: int = 0) -> str:
    """Evaluate one (dataset item, repeat) of an experiment and store Result + Scores."""
    try:
        return execute_item(experiment_id, item_id, repeat, force=force, config=config)
    except DB_TRANSIENT as exc:
        log.warning("database error on experiment %s item %s: %s; retrying",
                    experiment_id, item_id, type(exc).__name__)
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc
