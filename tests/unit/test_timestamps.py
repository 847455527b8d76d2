"""Timestamps: every datetime column stores and returns timezone-aware UTC, on SQLite and
PostgreSQL, so stored times compare with `utcnow()` in Python and in SQL alike.

SQLite has no timezone type (SQLAlchemy hands back naive datetimes there) and psycopg
returns `timestamptz` in the connection's time zone; UTCDateTime hides both differences.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, col

import models  # noqa: F401  (registers every table, the lease tables included)
from models.aggregates import raw_window_moments, window_start
from models.claims import claim_batch, due_evaluator_ids
from models.crud import insert_runs
from models.db import get_engine, session_scope
from models.tables import OnlineEvaluator, ProductionRunCreate, Score, SubjectType, utcnow
from models.types import UTCDateTime

T0 = datetime(2026, 3, 1, 17, 45, 12, 345678, tzinfo=timezone(timedelta(hours=5, minutes=30)))
# Written values: aware in several zones (a half-hour one, one west of UTC, UTC) and naive.
ZONES: list[timezone | None] = [timezone(timedelta(hours=5, minutes=30)),
                                timezone(timedelta(hours=-7)), UTC, None]
ELSEWHERE = timezone(timedelta(hours=-3))  # for comparisons made in SQL


def _is_datetime(column: sa.Column[Any]) -> bool:
    return isinstance(getattr(column.type, "impl", column.type), sa.DateTime)


def _timestamp_tables() -> list[sa.Table]:
    return [t for t in SQLModel.metadata.sorted_tables if any(_is_datetime(c) for c in t.c)]


def _filler(column: sa.Column[Any], n: int) -> Any:
    """A value for a required column that is neither a timestamp nor a foreign key."""
    fillers: list[tuple[type, Any]] = [(sa.JSON, {}), (sa.String, f"v{n}"),
                                       (sa.Boolean, False), (sa.Integer, 1), (sa.Float, 0.5)]
    type_ = getattr(column.type, "impl", column.type)  # AutoString is a TypeDecorator too
    return next(value for kind, value in fillers if isinstance(type_, kind))


def _written(n: int, k: int) -> datetime:
    """A timestamp distinct per column (n: the column's place), in the k-th of ZONES
    (round robin over the timestamp columns; naive: UTC)."""
    value = T0 + timedelta(seconds=n, microseconds=n)
    zone = ZONES[k % len(ZONES)]
    return value.astimezone(UTC).replace(tzinfo=None) if zone is None else value.astimezone(zone)


def _expected(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The test database; on PostgreSQL through connections whose session time zone is
    not UTC, so psycopg hands back timestamps at +05:45."""
    if make_url(db_url).get_backend_name() == "sqlite":
        yield get_engine(db_url)
        return
    engine = sa.create_engine(db_url, connect_args={"options": "-c TimeZone=Asia/Kathmandu"})
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Kathmandu"
    yield engine
    engine.dispose()


def test_every_datetime_column_is_utc_datetime():
    columns = [(t.name, c) for t in SQLModel.metadata.sorted_tables for c in t.c
               if _is_datetime(c)]
    assert len(columns) >= 20
    plain = [f"{table}.{c.name}" for table, c in columns if not isinstance(c.type, UTCDateTime)]
    assert plain == [], f"use sa_type=UTCDateTime for {plain}: SQLite returns naive times"


def test_every_timestamp_round_trips_aware_utc(engine: Engine):
    """One row in every table with a timestamp column, each timestamp written in a
    different zone (or naive), read back through Core and the ORM: aware, UTC, equal to
    what was written, and found by an SQL comparison with the same instant elsewhere."""
    written: dict[str, dict[str, datetime]] = {}
    ids: dict[Any, Any] = {}  # table -> primary key of its row
    n = k = 0
    tables = _timestamp_tables()
    parents = {fk.column.table for t in tables for fk in t.foreign_keys}
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:  # parents before children
            if table not in tables and table not in parents:
                continue
            row: dict[str, Any] = {}
            for column in table.c:
                n += 1
                foreign = next(iter(column.foreign_keys), None)
                if foreign is not None:
                    row[column.name] = ids[foreign.column.table]
                elif _is_datetime(column):
                    row[column.name] = _written(n, k)
                    k += 1
                elif column.primary_key and column.autoincrement in (True, "auto") \
                        and isinstance(column.type, sa.Integer):
                    continue
                elif not column.nullable and column.server_default is None:
                    row[column.name] = _filler(column, n)
            pk = table.primary_key.columns.values()[0]
            ids[table] = conn.execute(
                sa.insert(table).values(row).returning(pk)).scalar_one()
            written[table.name] = {k: v for k, v in row.items() if isinstance(v, datetime)}
    assert {t.name for t in tables} <= set(written)
    assert sum(v.tzinfo is None for w in written.values() for v in w.values()) >= 5

    mappers = {m.local_table: m.class_ for m in SQLModel._sa_registry.mappers}
    with engine.connect() as conn, Session(bind=conn) as session:  # one SQLite writer
        for table in tables:
            pk = table.primary_key.columns.values()[0]
            core = conn.execute(sa.select(table).where(pk == ids[table])).one()._mapping
            orm = session.get(mappers[table], ids[table])
            assert orm is not None
            for name, value in written[table.name].items():
                want = _expected(value)
                for how, got in (("core", core[name]), ("orm", getattr(orm, name))):
                    where = f"{table.name}.{name} ({how})"
                    assert isinstance(got, datetime), where
                    assert got.tzinfo is UTC, f"{where} came back as {got!r}"
                    assert got == want, f"{where}: wrote {value!r}, read {got!r}"
                matching = conn.execute(
                    sa.select(sa.func.count()).select_from(table)
                    .where(table.c[name] == want.astimezone(ELSEWHERE),
                           table.c[name] < (want + timedelta(microseconds=1)).astimezone(
                               ELSEWHERE))).scalar_one()
                assert matching == 1, f"{table.name}.{name}: SQL comparison missed the row"


def test_naive_and_aware_writes_of_one_instant_are_one_value(db_url: str):
    """Windowing in SQL (epoch seconds of subject_at) sees the instant, whatever zone the
    worker wrote it in."""
    instants = [T0, T0.astimezone(UTC).replace(tzinfo=None), T0.astimezone(ELSEWHERE)]
    with session_scope() as session:
        for i, at in enumerate(instants):
            session.add(Score(subject_type=SubjectType.RUN, subject_id=i, evaluator_id=7,
                              subject_at=at, scorer="s", scorer_version="1", value=1.0))
    with session_scope() as session:
        moments = raw_window_moments(session=session, evaluator_id=7, window_s=3600,
                                 since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))
        stored = session.execute(sa.select(col(Score.subject_at))).scalars().all()
    assert set(stored) == {T0} and all(v.tzinfo is UTC for v in stored)
    bucket = int(window_start(T0, 3600).timestamp())
    assert list(moments) == [(bucket, "s")] and moments[(bucket, "s")].n == 3


def _claim(now: datetime, **kwargs: Any) -> Any:
    with session_scope() as session:
        return claim_batch(session=session, evaluator_id=1, now=now, claim_timeout_s=120,
                           settle_s=0, **kwargs)


def test_claim_batch_compares_stored_times(db_url: str):
    """A beat tick (force=False) reads next_due_at back and compares it with now: the
    comparison that raised "can't compare offset-naive and offset-aware datetimes" on
    SQLite."""
    with session_scope() as session:
        insert_runs(session=session, rows_in=[
            ProductionRunCreate(source="s", external_id=f"r{i}",
                                created_at=utcnow() - timedelta(minutes=5))
            for i in range(3)])
    now = utcnow()  # after the runs were ingested: they are settled
    with session_scope() as session:
        session.add(OnlineEvaluator(id=1, name="due", scorers=[], every_s=60, batch_size=10,
                                    since=now - timedelta(hours=1), next_due_at=now))
    with session_scope() as session:
        assert due_evaluator_ids(session=session, now=now) == [1]
    first = _claim(now)
    assert first is not None and len(first.new) == 3 and first.reclaimed == []
    with session_scope() as session:
        ev = session.get(OnlineEvaluator, 1)
        assert ev is not None and ev.last_tick_at == now
        assert ev.next_due_at == now + timedelta(seconds=60)
        assert due_evaluator_ids(session=session, now=now + timedelta(seconds=30)) == []
    assert _claim(now + timedelta(seconds=30)) is None  # not due yet
    assert _claim(now + timedelta(seconds=30), force=True) is not None
    # Due again; `now` in another zone, then naive (taken as UTC), compares the same.
    later = (now + timedelta(seconds=91)).astimezone(ELSEWHERE)
    again = _claim(later)
    assert again is not None and again.claim_ids == []
    stale = _claim((now + timedelta(seconds=152)).replace(tzinfo=None))  # past the timeout
    assert stale is not None and sorted(stale.reclaimed) == sorted(first.new)
