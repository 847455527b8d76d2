"""Shared fixtures: real Redis, real RabbitMQ, real PostgreSQL, the fake model server,
real workers.

Redis is a server of the session's own (tests stop and restart it); PostgreSQL
(127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672, a fresh vhost per session) are the
machine's. A test that needs a service that is down fails with a message saying how
to start it. Nothing here mocks the broker, the database or our own code.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# A recognisable fake provider key: litellm's openai client needs one to call the fake server.
os.environ.setdefault("OPENAI_API_KEY", "sk-evalq-test-not-a-real-key-0000")
for _name in [n for n in os.environ if n.startswith("EVALQ_")]:
    del os.environ[_name]  # tests choose their own settings
# A test that forgets to choose a database must not write into the working directory.
os.environ["EVALQ_DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='evalq-tests-')}/evalq.db"

from bench.fakellm import FakeLLM  # noqa: E402
from tests.support import (  # noqa: E402
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_START_HINT,
    EnvPatch,
    RabbitBroker,
    RedisServer,
    WorkerProcess,
    redis_flush,
    truncate_all,
)

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of this test session's own, on a free port (so tests can stop and
    restart it, and parallel runs never share queues)."""
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The broker URL of the session's Redis (flushed first)."""
    redis_flush(redis_server.url)
    return redis_server.url


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitBroker]:
    """A vhost of this session's own on the machine's RabbitMQ, deleted at the end."""
    if not _port_open(RABBITMQ_HOST, RABBITMQ_PORT):
        pytest.fail(f"RabbitMQ is not reachable on {RABBITMQ_HOST}:{RABBITMQ_PORT}; "
                    f"{RABBITMQ_START_HINT}")
    broker = RabbitBroker.create()
    yield broker
    broker.delete()


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq: RabbitBroker) -> str:
    """The broker URL (amqp://guest:guest@127.0.0.1:5672/VHOST) of the session's vhost."""
    return rabbitmq.url


@contextmanager
def _fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    import psycopg

    if not _port_open("127.0.0.1", 5432):
        pytest.fail(
            "PostgreSQL is not reachable on 127.0.0.1:5432; start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        )
    name = f"evalq_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        from models.db import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own, dropped after it: for workers
    on a broker of their own (a vhost, a Redis), so that no worker of another broker
    sharing the session's database sees, or sweeps, this test's work."""
    with _fresh_database() as url:
        with EnvPatch(EVALQ_DATABASE_URL=url):
            from models.migrate import upgrade

            upgrade()
        yield url


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLM]:
    server = FakeLLM.start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> FakeLLM:
    """The fake OpenAI-compatible server, reset for this test."""
    fake_llm_server.reset()
    return fake_llm_server


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'evalq.db'}"


@pytest.fixture
def embedded_env(sqlite_url: str) -> Iterator[EnvPatch]:
    """Embedded mode (no broker) on a fresh SQLite file, migrated."""
    with EnvPatch(EVALQ_DATABASE_URL=sqlite_url, EVALQ_POLL_INTERVAL_S="0.05",
                  EVALQ_RETRY_INITIAL_S="0.01", EVALQ_RETRY_MAX_S="0.2") as env:
        from models.migrate import upgrade

        upgrade()
        yield env


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL, migrated, as the default DB."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    with EnvPatch(EVALQ_DATABASE_URL=url):
        from models.migrate import upgrade

        upgrade()
        if request.param == "postgresql":
            truncate_all(url)  # the session's database is shared by the tests
        yield url


@pytest.fixture(scope="module")
def distributed(redis_url: str, pg_url: str) -> Iterator[WorkerProcess]:
    """Distributed mode: settings point at Redis + PostgreSQL, and a real Celery worker
    subprocess (threads pool) consumes the queue."""
    from models.migrate import upgrade

    env = {"EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": pg_url,
           "EVALQ_POLL_INTERVAL_S": "0.1", "EVALQ_RETRY_INITIAL_S": "0.01",
           "EVALQ_RETRY_MAX_S": "0.2"}
    with EnvPatch(**env):
        upgrade()
        truncate_all(pg_url)  # nothing an earlier module left unfinished is sent again here
        worker = WorkerProcess.start(env, name="dist")
        try:
            yield worker
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def distributed_rabbitmq(rabbitmq_url: str, pg_url: str) -> Iterator[WorkerProcess]:
    """`distributed` on RabbitMQ: settings point at the session's RabbitMQ vhost +
    PostgreSQL, no Redis at all (the response cache falls back to the database), and a
    real Celery worker subprocess consumes the queues."""
    from models.migrate import upgrade

    env = {"EVALQ_BROKER_URL": rabbitmq_url, "EVALQ_DATABASE_URL": pg_url,
           "EVALQ_POLL_INTERVAL_S": "0.1", "EVALQ_RETRY_INITIAL_S": "0.01",
           "EVALQ_RETRY_MAX_S": "0.2", "EVALQ_INGEST_SETTLE_S": "0"}
    with EnvPatch(**env):
        upgrade()
        truncate_all(pg_url)  # nothing an earlier module left unfinished is sent again here
        worker = WorkerProcess.start(env, name="rabbit")
        try:
            yield worker
        finally:
            worker.stop()
