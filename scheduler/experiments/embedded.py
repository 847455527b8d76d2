"""Embedded mode: the same task code, run in this process on a thread pool.

Used when no broker is configured (a first run, a laptop, a CI job). Results go
to the same database as in distributed mode, so reports do not care which ran.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from models.crud import mark_experiment
from models.db import session_scope
from models.tables import ExperimentStatus

log = logging.getLogger(__name__)
_runs: dict[int, Future[None]] = {}
_lock = threading.Lock()


def _run_all(experiment_id: int, fn: Callable[..., Any], calls: Sequence[tuple],
             concurrency: int) -> None:
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="evalq") as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        errors = [f.exception() for f in futures]
    failures = [e for e in errors if e is not None]
    if failures:
        log.error("experiment %s: %d items raised, first: %r", experiment_id, len(failures),
                  failures[0])
        with session_scope() as session:
            mark_experiment(
                session=session, experiment_id=experiment_id, status=ExperimentStatus.FAILED,
                error=f"{len(failures)} items could not be stored, first: {failures[0]!r}",
            )


def start(experiment_id: int, fn: Callable[..., Any], calls: Sequence[tuple],
          concurrency: int) -> None:
    """Run fn(*args) for every args of `calls` in the background of this process."""
    future: Future[None] = Future()

    def target() -> None:
        try:
            _run_all(experiment_id, fn, calls, concurrency)
            future.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            future.set_exception(exc)

    runner = threading.Thread(target=target, name=f"evalq-embedded-{experiment_id}")
    with _lock:
        _runs[experiment_id] = future
    runner.start()


def running_here(experiment_id: int) -> Future[None] | None:
    """The future of an embedded run started by this process, if any."""
    with _lock:
        return _runs.get(experiment_id)
