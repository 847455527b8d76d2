"""Stopping an experiment early when its first items all fail the same permanent way.

A missing or refused API key, a model the provider does not know, or a request it always
rejects fails every item identically: running the rest only burns time (and, for a bad
request, money). The rule, checked after each chunk that stored an error:

- the experiment has no OK result at all, and
- its first EVALQ_FAIL_FAST_AFTER results (in the order they were stored) are all errors
  with the same permanent error type (workers.llm.calls.CONFIG_ERRORS: key, access, model), or
  the same request error type *and* the same message (workers.llm.calls.REQUEST_ERRORS);

then the experiment is marked `failed` with that error as its reason, and every chunk that
has not started yet returns without calling the model (`experiment_stopped`). A few items
failing among others that pass never stop anything: one OK result rules it out.

`execute_chunk` calls both, in embedded mode (in-process) and in workers alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col

from models.db import session_scope
from models.settings import get_settings
from models.tables import Experiment, ExperimentStatus, Result, ResultStatus, utcnow
from workers.llm.calls import CONFIG_ERRORS, REQUEST_ERRORS, redact

log = logging.getLogger(__name__)
_REASON_CHARS = 2000


def stop_reason(first: Sequence[tuple[str, str | None, str | None]], n: int) -> str | None:
    """Why an experiment whose first results are `first` ((status, error_type, error) in
    stored order) must stop, or None. Needs `n` (> 0) results, all errors of one permanent
    type; request errors must also share their message."""
    if n <= 0 or len(first) < n:
        return None
    rows = first[:n]
    _, error_type, error = rows[0]
    if error_type not in CONFIG_ERRORS | REQUEST_ERRORS:
        return None
    same_message = error_type in REQUEST_ERRORS
    for status, other_type, other_error in rows:
        if status != ResultStatus.ERROR or other_type != error_type:
            return None
        if same_message and other_error != error:
            return None
    return (f"stopped: the first {n} results failed with {error_type} and none succeeded, "
            f"so the remaining items were not run: {redact(error or error_type)}"
            )[:_REASON_CHARS]


def after_chunk(experiment_id: int) -> None:
    """Called after a chunk with at least one error Result was stored: marks the
    experiment failed when the rule above holds. Cheap once any result is OK (one read of
    the experiment row)."""
    n = get_settings().fail_fast_after
    if n <= 0:
        return
    with session_scope() as session:
        exp = session.execute(
            sa.select(col(Experiment.status), col(Experiment.n_done), col(Experiment.n_failed))
            .where(col(Experiment.id) == experiment_id)).one_or_none()
        if exp is None or exp[1] > 0 or exp[2] < n or exp[0] not in (
                ExperimentStatus.RUNNING, ExperimentStatus.COMPLETED):
            return
        first = session.execute(
            sa.select(col(Result.status), col(Result.error_type), col(Result.error))
            .where(col(Result.experiment_id) == experiment_id)
            .order_by(col(Result.id)).limit(n)).all()
        reason = stop_reason([(r[0], r[1], r[2]) for r in first], n)
        if reason is None:
            return
        # Conditional: a result that landed since (n_done > 0) or another stop wins.
        moved = session.execute(
            sa.update(Experiment)
            .where(col(Experiment.id) == experiment_id, col(Experiment.n_done) == 0,
                   col(Experiment.status).in_([ExperimentStatus.RUNNING,
                                               ExperimentStatus.COMPLETED]))
            .values(status=ExperimentStatus.FAILED, error=reason, finished_at=utcnow()))
    if moved.rowcount:  # type: ignore[attr-defined]
        log.info("experiment %s %s", experiment_id, reason)  # `evalq run` prints it on stderr


def experiment_stopped(experiment_id: int) -> bool:
    """True when the experiment was stopped (failed): its remaining chunks do nothing.
    One primary-key read."""
    with session_scope() as session:
        status = session.execute(
            sa.select(col(Experiment.status)).where(col(Experiment.id) == experiment_id)
        ).scalar_one_or_none()
    return status == ExperimentStatus.FAILED
