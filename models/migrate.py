"""Alembic migrations, driven from code: `evalq db upgrade` and the start-up checks.

The schema changes only through the revisions in models/migrations/versions;
nothing in the application path calls `create_all`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from models.db import get_engine, safe_url
from models.errors import DatabaseNotMigrated, DatabaseUnavailable
from models.settings import get_settings

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_checked: set[str] = set()


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and at `url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def wait_for_database(engine: Engine, timeout_s: float = 30.0) -> None:
    """Block until the database accepts a connection, or raise DatabaseUnavailable."""
    retrying = Retrying(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_delay(timeout_s),
        wait=wait_exponential_jitter(initial=0.2, max=3),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt, engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database {safe_url(str(engine.url))} after {timeout_s:.0f} s: "
            f"{exc.orig}; check EVALQ_DATABASE_URL and that the server is running"
        ) from exc


def upgrade(url: str | None = None) -> tuple[str | None, str]:
    """Apply every pending migration; returns (revision before, revision after)."""
    engine = get_engine(url)
    wait_for_database(engine)
    before = current_revision(engine)
    with engine.begin() as conn:
        cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    _checked.discard(str(engine.url))
    return before, head_revision()


def ensure_migrated(url: str | None = None) -> None:
    """Raise DatabaseNotMigrated unless the database is at the head revision."""
    engine = get_engine(url)
    key = str(engine.url)
    if key in _checked:
        return
    wait_for_database(engine)
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotMigrated(safe_url(key), current, head)
    _checked.add(key)


_prepared: set[str] = set()
_prepare_lock = threading.Lock()


def prepare_database() -> None:
    """Before the first write of a process: migrate a local SQLite file on first use
    (embedded mode creates it); elsewhere, check that the database is migrated. Done once
    per database per process."""
    settings = get_settings()
    url = settings.database_url
    if url in _prepared:
        return
    with _prepare_lock:
        if url in _prepared:
            return
        if settings.embedded and url.startswith("sqlite"):
            upgrade()
        else:
            ensure_migrated()
        _prepared.add(url)
