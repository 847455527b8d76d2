"""Handing an experiment's work to whoever runs it: the broker's workers (distributed) or a
thread pool of this process (embedded). The same plain functions run either way.

Offline work always goes in chunks of (item, repeat)s (`run_items`; one item per chunk
when the experiment has a cost budget, so the budget is checked before every call), and
rescoring one stored Result at a time (`rescore_result`). Tasks are sent by their task
objects with a lease each (workers/delivery/dispatch.py). Call after the rows the work
needs are committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery import Task
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from models.crud import get_experiment, mark_experiment
from models.db import session_scope
from models.settings import get_settings
from models.tables import ExperimentStatus
from scheduler.errors import EnqueueError
from scheduler.experiments import embedded
from workers.delivery.dispatch import forget_unsent, send_tasks
from workers.offline.chunks import execute_chunk
from workers.offline.rescore import rescore_result as rescore_here
from workers.tasks import rescore_result, run_items


def run_pairs(experiment_id: int, pairs: Sequence[tuple[int, int]], *, start: bool = False,
              force: bool = False, config_version: int = 0) -> None:
    """Evaluate (item_id, repeat) pairs of an experiment, in chunks of EVALQ_CHUNK_SIZE.
    `start`: mark the experiment running (distributed: in the transaction that stores the
    tasks' leases, so a producer killed mid-enqueue leaves a pending experiment to resume
    or a running one whose every task is leased)."""
    settings = get_settings()
    with session_scope() as session:
        budget = get_experiment(session=session, experiment_id=experiment_id).max_cost_usd
    size = 1 if budget is not None else settings.chunk_size
    listed = [[int(i), int(r)] for i, r in pairs]
    calls = [(experiment_id, listed[i:i + size]) for i in range(0, len(listed), size)]
    if not settings.embedded:
        _send(experiment_id, run_items, calls,
              {"force": force, "config_version": config_version}, start)
        return
    if start:
        with session_scope() as session:
            mark_experiment(session=session, experiment_id=experiment_id,
                            status=ExperimentStatus.RUNNING)
    # Twice the chunks that fill EVALQ_CONCURRENCY (the process-wide bound on target
    # calls): while one chunk writes its results, the next one's calls already run.
    chunk = max((len(c[1]) for c in calls), default=1)
    threads = max(1, min(64, (2 if chunk > 1 else 1) * settings.concurrency // chunk))
    embedded.start(experiment_id, lambda exp, chunk: execute_chunk(
        exp, chunk, force=force, config_version=config_version), calls, threads)


def rescore_results(experiment_id: int, result_ids: Sequence[int]) -> None:
    """Score stored Results with the scorers their experiment gained (no target call)."""
    settings = get_settings()
    calls = [(experiment_id, rid) for rid in result_ids]
    if settings.embedded:
        embedded.start(experiment_id, rescore_here, calls, max(1, min(64, settings.concurrency)))
    else:
        _send(experiment_id, rescore_result, calls, {}, False)


def _send(experiment_id: int, task: Task, calls: list[tuple[Any, ...]], kwargs: dict[str, Any],
          start: bool) -> None:
    def mark_running(session: Session) -> None:
        if start:
            mark_experiment(session=session, experiment_id=experiment_id,
                            status=ExperimentStatus.RUNNING)

    before: Callable[[Session], None] = mark_running
    try:
        send_tasks(task, calls, kwargs=kwargs, experiment_id=experiment_id,
                   before_commit=before)
    except SQLAlchemyError:
        raise
    except Exception as exc:  # noqa: BLE001 - kombu raises many connection error types
        with session_scope() as session:
            forget_unsent(session=session, experiment_id=experiment_id)
            mark_experiment(session=session, experiment_id=experiment_id,
                            status=ExperimentStatus.FAILED, error=f"enqueue failed: {exc}")
        raise EnqueueError(
            f"could not send experiment {experiment_id}'s tasks to the broker "
            f"({type(exc).__name__}: {exc}); check EVALQ_BROKER_URL and that the broker is "
            "running"
        ) from exc
