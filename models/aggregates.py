"""Queries behind online reports and alerts: plain functions, keyword-only, session first.

Scores are aggregated in SQL into "moments" (count, sum, sum of squares, passes) per
scorer, and optionally per time window, so a report over a million scores reads a few
rows. Windows are aligned to multiples of window_s seconds since the UTC epoch, computed
with integer arithmetic on Score.subject_at (strftime('%s') on SQLite, EXTRACT(EPOCH) on
PostgreSQL).

An online evaluator's moments come from the ScoreRollup (one row per evaluator, scorer and
minute of subject_at, kept at score time: add_to_rollup) for the whole minutes of the
period, and from the Scores themselves only for its ragged ends (a report up to "now"
reads the current minute's Scores) and for windows that are not whole minutes. The
rollup holds a claim's scores from the scoring that marked the claim done; a later
scoring of the same claim (a redelivery, a judge that answers differently) rewrites the
Score rows but not the rollup, so the two can differ by that claim's values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.crud import dialect_insert
from models.tables import (
    OnlineAlert,
    OnlineEvaluator,
    Score,
    ScoreRollup,
    SubjectType,
    utcnow,
)


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
ROLLUP_S = 60  # the rollup's bucket: one minute of subject_at


def _plus(a: Moments | None, b: Moments) -> Moments:
    if a is None:
        return b
    return Moments(n=a.n + b.n, n_unscored=a.n_unscored + b.n_unscored, total=a.total + b.total,
                   total_sq=a.total_sq + b.total_sq, n_passed=a.n_passed + b.n_passed)


def _merge(into: dict[Any, Moments], more: dict[Any, Moments]) -> dict[Any, Moments]:
    for key, m in more.items():
        into[key] = _plus(into.get(key), m)
    return into


def _minute_span(since: datetime | None, until: datetime | None
                 ) -> tuple[int | None, int | None] | None:
    """The whole rollup minutes inside [since, until), as epoch seconds [lo, hi) (None: no
    bound), or None when the period holds no whole minute."""
    lo = None if since is None else math.ceil(to_utc(since).timestamp() / ROLLUP_S) * ROLLUP_S
    hi = None if until is None else math.floor(to_utc(until).timestamp() / ROLLUP_S) * ROLLUP_S
    if lo is not None and hi is not None and lo >= hi:
        return None
    return lo, hi


def _epoch_time(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def rollup_bucket(subject_at: datetime) -> int:
    """The rollup minute (epoch seconds) holding `subject_at`."""
    return math.floor(to_utc(subject_at).timestamp()) // ROLLUP_S * ROLLUP_S


def add_to_rollup(*, session: Session, evaluator_id: int, subject_at: datetime | None,
                  scores: Iterable[tuple[str, float | None, bool | None]]) -> None:
    """Add one claim's (scorer, value, passed) scores to the rollup. Call it only in the
    transaction that moved the claim to done (models.claims.mark_claim_done returned
    True), so that no claim is ever added twice. Rows are written in scorer order, so
    concurrent claims lock the shared rows in one order (no deadlock)."""
    if subject_at is None:
        return  # such a Score falls in no window either
    bucket = rollup_bucket(subject_at)
    rows: dict[str, dict[str, Any]] = {}
    for scorer, value, passed in scores:
        row = rows.setdefault(scorer, {"evaluator_id": evaluator_id, "scorer": scorer,
                                       "bucket": bucket, "n": 0, "n_unscored": 0,
                                       "total": 0.0, "total_sq": 0.0, "n_passed": 0})
        if value is None:
            row["n_unscored"] += 1
        else:
            row["n"] += 1
            row["total"] += float(value)
            row["total_sq"] += float(value) * float(value)
            row["n_passed"] += 1 if passed is True else 0
    if not rows:
        return
    stmt = dialect_insert(session, ScoreRollup)
    table = ScoreRollup.__table__.c  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(
        index_elements=["evaluator_id", "scorer", "bucket"],
        set_={name: table[name] + getattr(stmt.excluded, name) for name in _LABELS},
    )
    for scorer in sorted(rows):
        session.execute(stmt.values(**rows[scorer]))


def evaluator_by_name(*, session: Session, name: str) -> OnlineEvaluator | None:
    """The online evaluator called `name`, or None."""
    return session.exec(select(OnlineEvaluator).where(OnlineEvaluator.name == name)).first()


def window_moments(
    *, session: Session, evaluator_id: int, window_s: int, since: datetime, until: datetime
) -> dict[tuple[int, str], Moments]:
    """Moments of an evaluator's Scores per (window start in epoch seconds, scorer), over
    subject_at in [since, until). Times must be UTC; windows with no Score are absent.
    Whole minutes come from the rollup when window_s is a whole number of minutes."""
    if window_s < 1:
        raise ValueError(f"window_s must be a positive number of seconds, not {window_s}")
    span = _minute_span(since, until) if window_s % ROLLUP_S == 0 else None
    if span is None:
        return raw_window_moments(session=session, evaluator_id=evaluator_id,
                                  window_s=window_s, since=since, until=until)
    lo, hi = span
    assert lo is not None and hi is not None  # since and until are given
    out = _rollup_window_moments(session, evaluator_id, window_s, lo, hi)
    for a, b in ((since, _epoch_time(lo)), (_epoch_time(hi), until)):
        if a < b:
            _merge(out, raw_window_moments(session=session, evaluator_id=evaluator_id,
                                           window_s=window_s, since=a, until=b))
    return dict(sorted(out.items()))


def _rollup_window_moments(session: Session, evaluator_id: int, window_s: int, lo: int,
                           hi: int) -> dict[tuple[int, str], Moments]:
    r = ScoreRollup.__table__.c  # type: ignore[attr-defined]
    rows = (
        sa.select(((r.bucket // window_s) * window_s).label("window"), r.scorer,
                  *(r[name] for name in _LABELS))
        .where(r.evaluator_id == evaluator_id, r.bucket >= lo, r.bucket < hi)
        .subquery()
    )
    result = session.execute(
        sa.select(rows.c.window, rows.c.scorer,
                  *(sa.func.sum(rows.c[name]).label(name) for name in _LABELS))
        .group_by(rows.c.window, rows.c.scorer)
    ).all()
    return {(int(row.window), row.scorer): _moments(row) for row in result}


def raw_window_moments(
    *, session: Session, evaluator_id: int, window_s: int, since: datetime, until: datetime
) -> dict[tuple[int, str], Moments]:
    """window_moments computed from the Score rows alone (no rollup)."""
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
    if evaluator_id is not None:
        span = _minute_span(since, until)
        if span is not None:
            lo, hi = span
            out = _rollup_scorer_moments(session, evaluator_id, lo, hi)
            ends = ((since, None if lo is None else _epoch_time(lo)),
                    (None if hi is None else _epoch_time(hi), until))
            for a, b in ends:
                if a is not None and b is not None and a < b:
                    _merge(out, raw_scorer_moments(session=session, evaluator_id=evaluator_id,
                                                   since=a, until=b))
            return dict(sorted(out.items()))
    return raw_scorer_moments(session=session, evaluator_id=evaluator_id,
                              experiment_id=experiment_id, since=since, until=until)


def _rollup_scorer_moments(session: Session, evaluator_id: int, lo: int | None,
                           hi: int | None) -> dict[str, Moments]:
    r = ScoreRollup.__table__.c  # type: ignore[attr-defined]
    where = [r.evaluator_id == evaluator_id]
    if lo is not None:
        where.append(r.bucket >= lo)
    if hi is not None:
        where.append(r.bucket < hi)
    result = session.execute(
        sa.select(r.scorer, *(sa.func.sum(r[name]).label(name) for name in _LABELS))
        .where(*where).group_by(r.scorer)
    ).all()
    return {row.scorer: _moments(row) for row in result}


def raw_scorer_moments(
    *,
    session: Session,
    evaluator_id: int | None = None,
    experiment_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Moments]:
    """scorer_moments computed from the Score rows alone (no rollup)."""
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
