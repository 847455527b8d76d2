"""Queries behind online reports and alerts: plain functions, keyword-only, session first.

Scores are aggregated in SQL into "moments" (count, sum, sum of squares, passes) per
scorer, and optionally per time window, so a report over a million scores reads a few
rows. Windows are aligned to multiples of window_s seconds since the UTC epoch, computed
with integer arithmetic on Score.subject_at (strftime('%s') on SQLite, EXTRACT(EPOCH) on
PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.crud import dialect_insert
from models.tables import OnlineAlert, OnlineEvaluator, Score, SubjectType, utcnow


@dataclass(frozen=True)
class Moments:
    """Aggregates of one group of Scores: enough for a mean, its CI and a pass rate."""

    n: int  # scored: value is not None
    n_unscored: int  # "could not score": value is None
    total: float  # sum of values
    total_sq: float  # sum of squared values
    n_passed: int  # scored and passed


def _epoch_seconds(session: Session, column: Any) -> Any:
    """Whole seconds since the UTC epoch of a timestamp column, as an SQL integer."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sa.cast(sa.func.strftime("%s", column), sa.BigInteger)
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)
    raise NotImplementedError(f"evalq supports SQLite and PostgreSQL, not {dialect}")


def _moment_columns(value: Any, passed: Any) -> tuple[Any, ...]:
    scored_pass = sa.case((sa.and_(value.is_not(None), passed.is_(True)), 1), else_=0)
    return (
        sa.func.count(value),
        sa.func.count() - sa.func.count(value),
        sa.func.coalesce(sa.func.sum(value), 0.0),
        sa.func.coalesce(sa.func.sum(value * value), 0.0),
        sa.func.coalesce(sa.func.sum(scored_pass), 0),
    )


def _moments(row: Any) -> Moments:
    return Moments(n=int(row.n), n_unscored=int(row.n_unscored), total=float(row.total),
                   total_sq=float(row.total_sq), n_passed=int(row.n_passed))


_LABELS = ("n", "n_unscored", "total", "total_sq", "n_passed")


def evaluator_by_name(*, session: Session, name: str) -> OnlineEvaluator | None:
    """The online evaluator called `name`, or None."""
    return session.exec(select(OnlineEvaluator).where(OnlineEvaluator.name == name)).first()


def window_moments(
    *, session: Session, evaluator_id: int, window_s: int, since: datetime, until: datetime
) -> dict[tuple[int, str], Moments]:
    """Moments of an evaluator's Scores per (window start in epoch seconds, scorer), over
    subject_at in [since, until). Times must be UTC; windows with no Score are absent."""
    if window_s < 1:
        raise ValueError(f"window_s must be a positive number of seconds, not {window_s}")
    epoch = _epoch_seconds(session, col(Score.subject_at))
    rows = (
        sa.select(  # type: ignore[call-overload]
            ((epoch // window_s) * window_s).label("bucket"), Score.scorer, Score.value,
            Score.passed,
        )
        .where(
            col(Score.evaluator_id) == evaluator_id,
            col(Score.subject_type) == SubjectType.RUN,
            col(Score.subject_at) >= since,
            col(Score.subject_at) < until,
        )
        .subquery()
    )
    # Grouping on the subquery's column, not the expression, keeps PostgreSQL from
    # seeing two differently bound copies of `window_s`.
    moments = [c.label(name) for c, name in
               zip(_moment_columns(rows.c.value, rows.c.passed), _LABELS, strict=True)]
    result = session.execute(
        sa.select(rows.c.bucket, rows.c.scorer, *moments)
        .group_by(rows.c.bucket, rows.c.scorer)
        .order_by(rows.c.bucket, rows.c.scorer)
    ).all()
    return {(int(r.bucket), r.scorer): _moments(r) for r in result}


def scorer_moments(
    *,
    session: Session,
    evaluator_id: int | None = None,
    experiment_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Moments]:
    """Moments per scorer of either an online evaluator's Scores with subject_at in
    [since, until) (UTC), or an offline experiment's Scores. Give exactly one id."""
    if (evaluator_id is None) == (experiment_id is None):
        raise ValueError("give exactly one of evaluator_id and experiment_id")
    where: list[Any]
    if evaluator_id is not None:
        where = [col(Score.evaluator_id) == evaluator_id,
                 col(Score.subject_type) == SubjectType.RUN]
        if since is not None:
            where.append(col(Score.subject_at) >= since)
        if until is not None:
            where.append(col(Score.subject_at) < until)
    else:
        where = [col(Score.experiment_id) == experiment_id]
    value, passed = col(Score.value), col(Score.passed)
    moments = [c.label(name) for c, name in
               zip(_moment_columns(value, passed), _LABELS, strict=True)]
    result = session.execute(
        sa.select(col(Score.scorer), *moments)
        .where(*where)
        .group_by(col(Score.scorer))
        .order_by(col(Score.scorer))
    ).all()
    return {r.scorer: _moments(r) for r in result}


def insert_alert(
    *, session: Session, evaluator_id: int, scorer: str, window_start: datetime, mean: float,
    threshold: float, n: int,
) -> int | None:
    """Insert the OnlineAlert of (evaluator, scorer, window) unless one exists.

    Returns the new row's id, or None when another caller got there first: the unique
    constraint, not a read before the write, decides who fires.
    """
    stmt = (
        dialect_insert(session, OnlineAlert)
        .values(evaluator_id=evaluator_id, scorer=scorer, window_start=window_start,
                mean=mean, threshold=threshold, n=n, delivered=False, error=None,
                created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["evaluator_id", "scorer", "window_start"])
        .returning(OnlineAlert.id)  # type: ignore[arg-type]
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    return None if new_id is None else int(new_id)


def record_alert_delivery(
    *, session: Session, alert_id: int, delivered: bool, error: str | None
) -> None:
    """Store the outcome of an alert's webhook delivery."""
    session.execute(
        sa.update(OnlineAlert)
        .where(col(OnlineAlert.id) == alert_id)
        .values(delivered=delivered, error=error)
    )


def to_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive time is taken as UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def window_start(value: datetime, window_s: int) -> datetime:
    """Start of the window_s-second window (aligned on the UTC epoch) holding `value`."""
    epoch = int(to_utc(value).timestamp())
    return datetime.fromtimestamp(epoch - epoch % window_s, UTC)
