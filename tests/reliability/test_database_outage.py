"""PostgreSQL unreachable from the worker for 10 s mid-run.

The worker reaches PostgreSQL through a TCP proxy that the test cuts (open connections
closed, new ones refused) and restores; the test process reads the database directly.
Tasks that hit the outage retry on OperationalError with a countdown (kept below the
visibility timeout) and the run completes with exact counts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bench.fakellm import FakeLLM
from scheduler import enqueue_offline_run, wait_for_experiment
from tests.reliability.harness import (
    SCORERS,
    Workers,
    assert_exact,
    slots_for,
    stored_results,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.reliability.tcp_proxy import TcpProxy
from tests.support import EnvPatch, RedisServer

N_ITEMS = 300
OUTAGE_S = 10


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(latency_ms=100, seed=3)
    yield server
    server.stop()


@pytest.fixture
def pg_proxy(rel_pg: str) -> Iterator[TcpProxy]:
    url = make_url(rel_pg)
    proxy = TcpProxy.start(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.stop()


def test_tcp_proxy_cut_and_restore(rel_pg: str, pg_proxy: TcpProxy):
    """The proxy itself: forwards, cuts open connections, refuses, forwards again."""
    import psycopg

    direct = make_url(rel_pg)
    via = make_url(rel_pg).set(drivername="postgresql", port=pg_proxy.port)
    with psycopg.connect(via.render_as_string(hide_password=False)) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        pg_proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(via.render_as_string(hide_password=False), connect_timeout=5)
    pg_proxy.restore()
    with psycopg.connect(via.render_as_string(hide_password=False)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert direct.port != pg_proxy.port


@pytest.mark.slow
def test_database_unavailable_for_10s(tmp_path: Path, fake: FakeLLM, rel_redis: RedisServer,
                                      rel_pg: str, pg_proxy: TcpProxy, rel_workers: Workers):
    via_proxy = make_url(rel_pg).set(port=pg_proxy.port).render_as_string(hide_password=False)
    env = worker_env(rel_redis.url, rel_pg, visibility_timeout_s=60, model_concurrency=16)
    worker = rel_workers.start({**env, "EVALQ_DATABASE_URL": via_proxy}, name="db-outage",
                               concurrency=slots_for(32))
    with EnvPatch(**env):  # this process reads PostgreSQL directly
        dataset, _ = write_dataset(tmp_path, N_ITEMS)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                                  scorers=SCORERS)
        wait_until(lambda: stored_results(exp) >= N_ITEMS * 0.3, 240, "30% stored")

        pg_proxy.cut()
        cut_at = time.monotonic()
        time.sleep(1)  # a commit already on the wire when the proxy was cut may still land
        stored_at_cut = stored_results(exp)
        assert stored_at_cut < N_ITEMS, "the run finished before the outage"
        time.sleep(OUTAGE_S - 1)
        # Nothing reached the database while it was unreachable from the worker.
        assert stored_results(exp) == stored_at_cut
        connections_before = pg_proxy.accepted
        pg_proxy.restore()

        summary = wait_for_experiment(exp, timeout=300)
        recovered_s = time.monotonic() - cut_at
        counts = assert_exact(exp, N_ITEMS)
        assert counts.error == 0, counts
        assert summary["counts"]["done"] == N_ITEMS

    log = worker.output()
    db_errors = len(re.findall(r"database error on experiment", log))
    retries = len(re.findall(r"Task evalq\.run_items?\[[^\]]+\] retry: Retry in", log))
    assert db_errors > 0 and retries > 0, log[-3000:]
    assert "MaxRetriesExceeded" not in log
    assert pg_proxy.accepted > connections_before  # the worker reconnected
    print(f"\nDB cut at {stored_at_cut}/{N_ITEMS} stored for {OUTAGE_S} s: {db_errors} "
          f"database errors, {retries} task retries; completed {recovered_s:.1f} s after "
          f"the cut; {fake.stats()['total'] - N_ITEMS} model calls repeated")
