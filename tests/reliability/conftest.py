"""Fixtures of the reliability suite: a broker per test (so a test may stop it), the
session's PostgreSQL database migrated, and worker subprocesses that are always reaped,
whatever the test did to them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.harness import Workers
from tests.support import (
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_START_HINT,
    Broker,
    EnvPatch,
    RabbitBroker,
    RedisBroker,
    RedisServer,
    port_open,
    truncate_all,
)


@pytest.fixture
def rel_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence): stop() loses every message."""
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "rabbitmq"])
def rel_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The test once per broker, with `.url`, `.kind` ("redis"/"rabbitmq"), `.stop()`,
    `.start()` and `.restart()`:

    - redis: a redis-server of this test's own, no persistence; a restart loses every
      queued and unacknowledged message.
    - rabbitmq: a vhost of this test's own on the machine's RabbitMQ; a restart is
      `rabbitmqctl stop_app` / `start_app` (every connection drops, durable queues keep
      their persistent messages, unacknowledged ones are ready again). It stops the
      whole node's app: other vhosts' clients reconnect too.
    """
    if request.param == "redis":
        server = RedisServer.start()
        try:
            yield RedisBroker(server)
        finally:
            server.stop()
        return
    if not port_open(RABBITMQ_HOST, RABBITMQ_PORT):
        pytest.fail(f"RabbitMQ is not reachable on {RABBITMQ_HOST}:{RABBITMQ_PORT}; "
                    f"{RABBITMQ_START_HINT}")
    broker = RabbitBroker.create()
    try:
        yield broker
    finally:
        broker.delete()  # starts the app again if the test left it stopped


@pytest.fixture
def rel_pg(pg_url: str) -> str:
    """The session's PostgreSQL database, migrated and emptied: work an earlier test left
    unfinished (leases, running experiments) must not be found and sent again by this
    test's workers, on this test's broker."""
    with EnvPatch(EVALQ_DATABASE_URL=pg_url):
        from models.migrate import upgrade

        upgrade()
    truncate_all(pg_url)
    return pg_url


@pytest.fixture
def rel_workers() -> Iterator[Workers]:
    workers = Workers()
    yield workers
    workers.reap()
