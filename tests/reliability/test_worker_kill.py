"""A worker SIGKILLed at any moment loses nothing and doubles nothing, by itself, fast.

Every test here runs with evalq's default settings (visibility timeout, heartbeat,
dead-after): no setting is shortened and no recovery command is called by hand. The
experiment must complete within RECOVERY_S of the kill (a live worker remains) or of a
replacement starting, with exactly one Result per (item, repeat), one Score per scorer
and counters equal to the rows. A test fails, never warns, when anything is lost or late.

How: each task holds a lease in the database that its worker's heartbeat keeps alive;
the sweeper of any live worker sends again the leases of a dead worker and the messages
a broker lost (workers/delivery/sweeper.py). Each kill test runs on Redis and on RabbitMQ.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from bench.fakellm import FakeLLM
from scheduler import enqueue_offline_run, progress, wait_for_experiment
from tests.reliability.harness import (
    SCORERS,
    Workers,
    assert_exact,
    broker_pairs,
    held_by,
    report_recovery,
    result_pairs,
    stored_results,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.support import Broker, EnvPatch, RedisServer

N_ITEMS = 600
RECOVERY_S = 60  # README "Guarantees": complete within a minute of a kill


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(seed=1)
    yield server
    server.stop()


def _kill_one_of_two(tmp_path: Path, fake: FakeLLM, broker: Broker, pg: str,
                     workers: Workers, *, latency_ms: int, kill_at: float) -> None:
    fake.reset()
    fake.configure(latency_ms=latency_ms)
    env = worker_env(broker.url, pg)
    with EnvPatch(**env):
        name = f"victim-{broker.kind}"
        victim = workers.start(env, name=name, concurrency=4)
        survivor = workers.start(env, name=f"survivor-{broker.kind}", concurrency=4)
        dataset, _ = write_dataset(tmp_path, N_ITEMS)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                  api_base=fake.base_url, scorers=SCORERS)
        wait_until(lambda: stored_results(exp) >= kill_at * N_ITEMS and held_by(name), 240,
                   f"{kill_at:.0%} of the results stored, the victim holding work")
        held = held_by(name)
        victim.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        assert stored_results(exp) < N_ITEMS, "the run finished before the kill"

        wait_for_experiment(exp, timeout=RECOVERY_S)
        recovered_s = time.monotonic() - killed_at
        counts = assert_exact(exp, N_ITEMS)
        assert counts.error == 0, counts  # no fault was injected
        calls = fake.stats()["total"]
        # At most what the dead worker held (and had taken, unclaimed) was called twice.
        assert N_ITEMS <= calls <= N_ITEMS + len(held) + 4 * 16, (calls, len(held))
        assert survivor.process.poll() is None
        report_recovery("worker SIGKILLed mid model calls, another alive", broker.kind,
                        recovered_s, items=N_ITEMS, held=len(held),
                        calls_repeated=calls - N_ITEMS)


@pytest.mark.slow
def test_worker_sigkill_mid_model_calls(tmp_path: Path, fake: FakeLLM, rel_broker: Broker,
                                        rel_pg: str, rel_workers: Workers):
    """Killed while its model calls (200 ms each) are in flight, at ~30% stored."""
    _kill_one_of_two(tmp_path, fake, rel_broker, rel_pg, rel_workers, latency_ms=200,
                     kill_at=0.3)


def _waiting_score_insert(pg_admin: sa.Engine) -> list[int]:
    with pg_admin.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE 'INSERT INTO score%'")).scalars().all())


@pytest.mark.slow
def test_worker_sigkill_inside_a_database_write(tmp_path: Path, fake: FakeLLM,
                                                rel_broker: Broker, rel_pg: str,
                                                rel_workers: Workers):
    """The kill provably lands inside a write: the test holds a SHARE lock on the score
    table, so the worker's chunk transaction (Results inserted, then Scores) waits inside
    PostgreSQL; the worker is killed there, the transaction rolls back (none of the
    chunk's Results appear), and the chunk is sent again and stored once."""
    fake.reset()
    env = worker_env(rel_broker.url, rel_pg)
    admin = sa.create_engine(rel_pg)
    with EnvPatch(**env):
        name = f"writer-{rel_broker.kind}"
        victim = rel_workers.start(env, name=name, concurrency=1)
        dataset, _ = write_dataset(tmp_path, 64)
        with admin.connect() as lock:
            locked = lock.begin()
            lock.execute(sa.text("LOCK TABLE score IN SHARE MODE"))
            exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                      api_base=fake.base_url, scorers=SCORERS)
            wait_until(lambda: _waiting_score_insert(admin), 120,
                       "the worker's transaction waiting to insert Scores")
            held = held_by(name)
            assert held, "the worker holds no lease while writing"
            victim.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            locked.commit()
        # The backend of the dead worker finds its client gone and rolls back.
        wait_until(lambda: not _waiting_score_insert(admin), 60, "the dead write ended")
        time.sleep(1)
        assert not set(held) & result_pairs(exp), "the killed transaction's Results landed"
        rel_workers.start(env, name=f"writer-b-{rel_broker.kind}", concurrency=2)
        wait_for_experiment(exp, timeout=RECOVERY_S)
        report_recovery("worker SIGKILLed inside a database write, replacement started",
                        rel_broker.kind, time.monotonic() - killed_at, held=len(held))
        assert_exact(exp, 64)
    admin.dispose()


@pytest.mark.slow
def test_both_workers_killed_then_one_started(tmp_path: Path, fake: FakeLLM,
                                              rel_broker: Broker, rel_pg: str,
                                              rel_workers: Workers):
    """Every worker dies; the run completes within RECOVERY_S of a new one starting."""
    fake.reset()
    fake.configure(latency_ms=200)
    env = worker_env(rel_broker.url, rel_pg)
    with EnvPatch(**env):
        first = rel_workers.start(env, name=f"both-a-{rel_broker.kind}", concurrency=4)
        second = rel_workers.start(env, name=f"both-b-{rel_broker.kind}", concurrency=4)
        dataset, _ = write_dataset(tmp_path, 400)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                  api_base=fake.base_url, scorers=SCORERS)
        wait_until(lambda: stored_results(exp) >= 100, 240, "a quarter stored")
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)
        stored = stored_results(exp)
        assert stored < 400, "the run finished before the kill"
        time.sleep(3)
        assert progress(exp)["status"] == "running"
        rel_workers.start(env, name=f"both-c-{rel_broker.kind}", concurrency=4)
        started_at = time.monotonic()
        wait_for_experiment(exp, timeout=RECOVERY_S)
        report_recovery("both workers SIGKILLed, one started (from its start)",
                        rel_broker.kind, time.monotonic() - started_at, stored=stored)
        assert_exact(exp, 400)


def _blocked_in_brpop(client: redis.Redis) -> bool:
    return any(c.get("cmd") == "brpop" and "b" in c.get("flags", "")
               for c in client.client_list())


@pytest.mark.slow
def test_message_taken_by_brpop_then_killed(tmp_path: Path, fake: FakeLLM, rel_pg: str,
                                            rel_redis: RedisServer, rel_workers: Workers):
    """Redis only: kombu takes a message with BRPOP and records it as unacknowledged in a
    second round trip, so a worker killed in between leaves the message nowhere in Redis.
    Made deterministic: an idle worker is frozen (SIGSTOP) while its BRPOP is blocked,
    one task is enqueued (Redis hands it to the frozen BRPOP), the worker is SIGKILLed.
    Another worker's sweeper sees the queue empty and the lease unclaimed, and sends it
    again."""
    fake.reset()
    env = worker_env(rel_redis.url, rel_pg)
    client = redis.Redis.from_url(rel_redis.url)
    with EnvPatch(**env):
        frozen = rel_workers.start(env, name="brpop-window", concurrency=1)
        for attempt in range(10):
            wait_until(lambda: _blocked_in_brpop(client), 30, "the idle worker in BRPOP")
            os.kill(frozen.process.pid, signal.SIGSTOP)
            if not _blocked_in_brpop(client):  # its 1 s BRPOP just ended: try again
                os.kill(frozen.process.pid, signal.SIGCONT)
                continue
            dataset, _ = write_dataset(tmp_path, 1, tag=f"window{attempt}")
            exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                      api_base=fake.base_url, scorers=SCORERS)
            if client.llen("evalq.offline") == 0:
                break  # the frozen worker's BRPOP took it
            os.kill(frozen.process.pid, signal.SIGCONT)  # too late: it stays queued
            wait_for_experiment(exp, timeout=60)
        else:
            pytest.fail("could not catch the worker blocked in BRPOP")
        frozen.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        # The message is gone from Redis: neither queued nor unacknowledged.
        assert broker_pairs(client, exp) == set(), "kombu recorded it after all"
        rel_workers.start(env, name="brpop-window-b", concurrency=1)
        wait_for_experiment(exp, timeout=RECOVERY_S)
        report_recovery("message lost between BRPOP and the unacked record", "redis",
                        time.monotonic() - killed_at)
        assert_exact(exp, 1)
