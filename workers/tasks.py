"""Celery tasks: thin wrappers that take ids and call plain functions.

Arguments are ids only (Flower shows task arguments): never prompts, never keys.
"""

from __future__ import annotations

import logging

from celery import Task
from sqlalchemy.exc import DBAPIError, OperationalError

from models.settings import get_settings
from workers.celery_app import app
from workers.execution import execute_item

log = logging.getLogger(__name__)

# The database may be briefly unreachable (restart, failover): worth another try.
DB_TRANSIENT = (OperationalError, DBAPIError)


def _countdown(retries: int) -> float:
    # Stay well below the broker's visibility timeout, so a retry is never redelivered twice.
    return float(min(2 ** retries, 30, get_settings().visibility_timeout_s / 4))


@app.task(name="evalq.online_tick", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=3)
def online_tick(self: Task) -> int:
    """Claim the next sampled batch of every due online evaluator; enqueue their scoring."""
    from workers.online import tick_and_enqueue

    try:
        return tick_and_enqueue(app)
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


@app.task(name="evalq.sweep_stalled", acks_late=True, reject_on_worker_lost=True)
def sweep_stalled() -> dict[int, int]:
    """Re-enqueue the missing items of experiments that stored nothing for longer than the
    visibility timeout (tasks lost between Redis' BRPOP and its unacked record)."""
    from workers.sweeper import sweep_stalled as sweep

    return sweep(app)


@app.task(name="evalq.score_runs", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def score_runs(self: Task, claim_ids: list[int]) -> dict[str, int]:
    """Score a chunk of claimed production runs (their scorers run together)."""
    from workers.online import score_claims

    try:
        return score_claims(claim_ids)
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


@app.task(name="evalq.score_run", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def score_run(self: Task, claim_id: int) -> str:
    """Score one claimed production run with its online evaluator's scorers."""
    from workers.online import score_claim

    try:
        return score_claim(claim_id)
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


@app.task(name="evalq.rescore_result", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def rescore_result(self: Task, experiment_id: int, result_id: int) -> str:
    """Score a stored Result with scorers added to its experiment (no target call)."""
    from workers.rescore import rescore_result as rescore

    try:
        return rescore(experiment_id, result_id)
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


@app.task(name="evalq.run_items", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def run_items(self: Task, experiment_id: int, pairs: list[list[int]], force: bool = False,
              config: int = 0) -> dict[str, int]:
    """Evaluate a chunk of (dataset item, repeat)s of an experiment: the model calls run
    together, Results and Scores are stored in one transaction."""
    from workers.chunks import execute_chunk

    try:
        return execute_chunk(experiment_id, pairs, force=force, config=config)
    except DB_TRANSIENT as exc:
        log.warning("database error on experiment %s chunk of %d: %s; retrying",
                    experiment_id, len(pairs), type(exc).__name__)
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc


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
