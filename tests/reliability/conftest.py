"""Fixtures of the reliability suite: a Redis server per test (so a test may stop it),
the session's PostgreSQL database migrated, and worker subprocesses that are always
reaped, whatever the test did to them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.harness import Workers
from tests.support import EnvPatch, RedisServer


@pytest.fixture
def rel_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence): stop() loses every message."""
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture
def rel_pg(pg_url: str) -> str:
    """The session's PostgreSQL database, migrated (experiments are told apart by id)."""
    with EnvPatch(EVALQ_DATABASE_URL=pg_url):
        from models.migrate import upgrade

        upgrade()
    return pg_url


@pytest.fixture
def rel_workers() -> Iterator[Workers]:
    workers = Workers()
    yield workers
    workers.reap()
