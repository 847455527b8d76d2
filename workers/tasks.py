"""Celery tasks: thin wrappers that take ids and call plain functions.

Arguments are ids only (Flower shows task arguments): never prompts, never keys. Tasks
sent by evalq carry a `lease` (models/leases.py): the task claims it before working, so
a copy of a task that a live worker is running does nothing, and a task whose worker died
is sent again by the sweeper (workers/delivery/sweeper.py).

Three tasks do the work, one per kind: `run_items` (a chunk of an experiment's (item,
repeat)s), `rescore_result` (new scorers on a stored output), `score_runs` (a chunk of
claimed production runs); `online_tick` claims the runs. The scheduler sends them by these
objects (`run_items.s(...)`), never by name.
"""

from __future__ import annotations

import logging

from celery import Task

from workers.celery_app import app
from workers.delivery import giveup
from workers.delivery.leased import DB_TRANSIENT, countdown, run_leased
from workers.offline.chunks import execute_chunk
from workers.offline.rescore import rescore_result as rescore
from workers.online.claimed_runs import score_claims
from workers.online.tick import tick_and_enqueue

log = logging.getLogger(__name__)


@app.task(name="evalq.online_tick", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=3)
def online_tick(self: Task) -> int:
    """Claim the next sampled batch of every due online evaluator; enqueue their scoring."""
    try:
        return tick_and_enqueue(score_runs)
    except DB_TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=countdown(self.request.retries)) from exc


@app.task(name="evalq.score_runs", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def score_runs(self: Task, claim_ids: list[int], lease: int | None = None) -> dict[str, int]:
    """Score a chunk of claimed production runs (their scorers run together)."""
    return run_leased(self, lease, lambda: score_claims(claim_ids),
                      lambda attempts: giveup.online_claims(claim_ids, attempts), {"held": 1},
                      f"online claims {claim_ids[:3]}...")


@app.task(name="evalq.rescore_result", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def rescore_result(self: Task, experiment_id: int, result_id: int, lease: int | None = None
                   ) -> str:
    """Score a stored Result with scorers added to its experiment (no target call)."""
    return run_leased(self, lease, lambda: rescore(experiment_id, result_id),
                      lambda attempts: giveup.rescore(experiment_id, result_id, attempts),
                      "held", f"rescore of result {result_id}")


@app.task(name="evalq.run_items", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=20)
def run_items(self: Task, experiment_id: int, pairs: list[list[int]], force: bool = False,
              config_version: int = 0, lease: int | None = None) -> dict[str, int]:
    """Evaluate a chunk of (dataset item, repeat)s of an experiment: the model calls run
    together, Results and Scores are stored in one transaction."""
    return run_leased(self, lease,
                      lambda: execute_chunk(experiment_id, pairs, force=force,
                                            config_version=config_version),
                      lambda attempts: giveup.offline_items(experiment_id, pairs, attempts),
                      {"held": len(pairs)},
                      f"experiment {experiment_id} chunk of {len(pairs)}")
