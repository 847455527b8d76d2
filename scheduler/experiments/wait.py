"""Waiting for an experiment: its progress read from the database (never from Celery
results), and a wait that ends when it is done."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from models.crud import get_experiment, result_status_counts
from models.db import session_scope
from models.settings import get_settings
from models.tables import ExperimentStatus, ResultStatus
from scheduler.errors import WaitTimeout
from scheduler.experiments import embedded
from scheduler.liveness import NoWorkerWatch

DONE_STATUSES = {ExperimentStatus.COMPLETED.value, ExperimentStatus.FAILED.value,
                 ExperimentStatus.BUDGET_EXCEEDED.value}


def progress(experiment_id: int) -> dict[str, Any]:
    """Status and counts of an experiment, read from the database: done, failed (the
    target errored), skipped_budget (not run: the --max-cost budget was spent), pending."""
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        # The experiment's failed counter includes the items the budget skipped.
        skipped = result_status_counts(session=session, experiment_id=experiment_id).get(
            ResultStatus.SKIPPED_BUDGET.value, 0) if exp.n_failed else 0
        return {"experiment_id": exp.id, "status": exp.status, "total": exp.total_items,
                "done": exp.n_done, "failed": max(0, exp.n_failed - skipped),
                "skipped_budget": skipped,
                "pending": max(0, exp.total_items - exp.n_done - exp.n_failed),
                "error": exp.error}


def wait_until_done(
    experiment_id: int,
    timeout: float | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_no_worker: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Block until the experiment is completed, over budget or failed, and return its last
    progress. Raises WaitTimeout.

    `on_no_worker` (distributed mode): called once with a message saying so, and what to
    do, when no live worker consumes the experiment's queue while items wait (checked at
    once and every few seconds; said within about 5 s). The wait goes on."""
    settings = get_settings()
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = None
    if on_no_worker is not None and not settings.embedded:
        watch = NoWorkerWatch(experiment_id)
    while True:
        state = progress(experiment_id)
        if on_progress is not None:
            on_progress(state)
        if state["status"] in DONE_STATUSES:
            return state
        if watch is not None and on_no_worker is not None:
            message = watch.check(state)
            if message is not None:
                on_no_worker(message)
        local = embedded.running_here(experiment_id)
        if local is not None and local.done() and local.exception() is not None:
            raise local.exception()  # type: ignore[misc]
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(
                f"experiment {experiment_id} is still {state['status']} after {timeout} s "
                f"({state['total'] - state['pending']}/{state['total']} done); it keeps running: "
                f"check later with `evalq status {experiment_id}`"
            )
        time.sleep(settings.poll_interval_s)
