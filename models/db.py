"""Engines and sessions: one engine per database URL per process.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every
transaction starts with BEGIN IMMEDIATE so that concurrent writers queue on the
busy timeout instead of failing on a lock upgrade. PostgreSQL gets a pool sized
for a threaded worker and pre-ping, so a restarted server is reconnected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from models.settings import get_settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str) -> Engine:
    """A new engine for `url`, configured for evalq's access pattern."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            url,
            hide_parameters=True,  # errors never carry the user's data (logs, Flower)
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=20,
            max_overflow=50,
        )
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(
        url, pool_size=10, max_overflow=60, pool_pre_ping=True, pool_recycle=1800,
        hide_parameters=True,
    )


def get_engine(url: str | None = None) -> Engine:
    """The shared engine of `url` (default: EVALQ_DATABASE_URL)."""
    url = url or get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = create_db_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after fork, in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
