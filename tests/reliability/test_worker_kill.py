"""A worker SIGKILLed mid-experiment loses nothing and doubles nothing.

The dead worker's unacknowledged tasks stay in Redis' unacked set; once they are older
than the visibility timeout, a live worker's sweep puts them back on the queue (see
`transport_options` in workers/celery_app.py). A redelivered task whose Result exists is
skipped; one that was interrupted runs again and upserts.

One window is not covered by Redis: kombu takes a message with BRPOP and records it in
the unacked set in a second round trip, so a worker killed in between loses that
message. Beat's sweep (workers/sweeper.py) enqueues the missing items of an experiment
that stored nothing for longer than the visibility timeout
(test_task_lost_between_pop_and_unacked_is_swept_back). The kill tests account for it
exactly: at the kill, every (item, repeat) must have a Result or be carried by a message
still in Redis; any other is reported, then recovered like the sweep does.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scheduler import enqueue_offline_run, progress, wait_for_experiment
from scheduler.reruns import resume
from tests.fakellm import FakeLLM
from tests.reliability.harness import (
    SCORERS,
    Workers,
    all_pairs,
    assert_exact,
    broker_pairs,
    items_per_task,
    result_pairs,
    stored_results,
    wait_stable,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.support import EnvPatch, RedisServer

N_ITEMS = 1000
VISIBILITY_S = 15  # above the longest task here (a chunk: a few seconds), with room
LOST_WINDOW_BUG = (
    "bug: a task a worker popped from Redis but had not yet recorded as unacked is lost "
    "when the worker is killed. kombu's Redis transport takes a message with BRPOP (Redis "
    "removes it from the queue list) and adds it to the 'unacked' hash/index in a second "
    "round trip (kombu/transport/redis.py QoS.append, after the BRPOP reply is parsed); a "
    "SIGKILL in between leaves the message neither queued nor unacked, so no visibility "
    "timeout brings it back and the experiment stays 'running' until `evalq resume`. "
    "README 'Guarantees' says a worker killed mid-task loses nothing; nothing in evalq "
    "re-enqueues the (item, repeat)s of a stalled experiment by itself")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(seed=1)
    yield server
    server.stop()


def _kill_and_recover(tmp_path: Path, fake: FakeLLM, broker: RedisServer, pg: str,
                      workers: Workers, *, latency_ms: int, kill_at: float) -> None:
    fake.reset()
    fake.configure(latency_ms=latency_ms)
    env = worker_env(broker.url, pg, visibility_timeout_s=VISIBILITY_S)
    queues = redis.Redis.from_url(broker.url)
    with EnvPatch(**env):
        first = workers.start(env, name=f"kill-a-{latency_ms}", concurrency=32)
        dataset, _ = write_dataset(tmp_path, N_ITEMS)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                  api_base=fake.base_url, scorers=SCORERS)
        wait_until(lambda: stored_results(exp) >= kill_at * N_ITEMS, 240,
                   f"{kill_at:.0%} of the results stored")
        first.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(1)  # a COMMIT the worker sent just before dying still lands
        stored = result_pairs(exp)
        held_by_dead_worker = queues.hlen("unacked")
        assert len(stored) < N_ITEMS, "the worker finished before it could be killed"
        assert held_by_dead_worker > 0, "the killed worker held no unacknowledged task"
        # Every (item, repeat) has a Result or a message in Redis that will bring it back.
        lost = all_pairs(exp) - stored - broker_pairs(queues, exp)

        second = workers.start(env, name=f"kill-b-{latency_ms}", concurrency=32)
        if lost:
            # Redelivery brings back all but those, then the run stalls exactly there.
            wait_until(lambda: progress(exp)["pending"] <= len(lost), 300,
                       "everything but the lost tasks done")
            wait_stable(lambda: result_pairs(exp), quiet_s=3, timeout=120)
            assert all_pairs(exp) - result_pairs(exp) == lost
            warnings.warn(f"{len(lost)} (item, repeat)s lost at the SIGKILL; "
                          f"{LOST_WINDOW_BUG}", stacklevel=1)
            assert resume(exp) == len(lost)
        summary = wait_for_experiment(exp, timeout=300)
        recovered_s = time.monotonic() - killed_at

        counts = assert_exact(exp, N_ITEMS)
        assert counts.error == 0, counts  # no fault was injected
        assert (summary["counts"]["done"], summary["counts"]["pending"]) == (N_ITEMS, 0)
        # Nothing is left behind in the broker: every redelivered task was acknowledged.
        wait_until(lambda: queues.hlen("unacked") == 0 and queues.llen("evalq.offline") == 0,
                   60, "the broker's queue and unacked set drained")
        assert "evalq.run_item" in second.output()
        calls = fake.stats()["total"]
        # At most the items of the tasks the dead worker held were called twice.
        assert N_ITEMS <= calls <= N_ITEMS + held_by_dead_worker * items_per_task(), calls
        print(f"\nlatency {latency_ms} ms: killed with {len(stored)} results stored and "
              f"{held_by_dead_worker} tasks unacked ({len(lost)} items lost in the BRPOP "
              f"window); completed {recovered_s:.1f} s later; {calls - N_ITEMS} model "
              "calls repeated")


@pytest.mark.slow
def test_worker_sigkill_mid_experiment(tmp_path: Path, fake: FakeLLM, rel_redis: RedisServer,
                                       rel_pg: str, rel_workers: Workers):
    """Killed while ~32 model calls (200 ms each) are in flight, at ~30% stored."""
    _kill_and_recover(tmp_path, fake, rel_redis, rel_pg, rel_workers, latency_ms=200,
                      kill_at=0.3)


@pytest.mark.slow
def test_worker_sigkill_during_db_writes(tmp_path: Path, fake: FakeLLM, rel_redis: RedisServer,
                                         rel_pg: str, rel_workers: Workers):
    """The model answers at once, so the worker spends its time writing: killed at ~50%,
    the kill lands in (or between) Result/Score transactions, which PostgreSQL rolls back."""
    _kill_and_recover(tmp_path, fake, rel_redis, rel_pg, rel_workers, latency_ms=0,
                      kill_at=0.5)


def _blocked_in_brpop(client: redis.Redis) -> bool:
    return any(c.get("cmd") == "brpop" and "b" in c.get("flags", "")
               for c in client.client_list())


def test_task_lost_between_pop_and_unacked_is_swept_back(tmp_path: Path, fake: FakeLLM,
                                                  rel_redis: RedisServer, rel_pg: str,
                                                  rel_workers: Workers):
    """Widen the window deterministically: freeze an idle worker (SIGSTOP) while its BRPOP
    is blocked in Redis, enqueue one task (Redis hands it to the frozen worker's BRPOP),
    then SIGKILL the worker. The message is lost to Redis; beat's sweep enqueues the
    stalled experiment's missing item again."""
    fake.reset()
    env = worker_env(rel_redis.url, rel_pg, visibility_timeout_s=5)
    client = redis.Redis.from_url(rel_redis.url)
    with EnvPatch(**env):
        worker = rel_workers.start(env, name="brpop-window", concurrency=1)
        for attempt in range(10):
            wait_until(lambda: _blocked_in_brpop(client), 30, "the idle worker in BRPOP")
            os.kill(worker.process.pid, signal.SIGSTOP)
            if not _blocked_in_brpop(client):  # its 1 s BRPOP just ended: try again
                os.kill(worker.process.pid, signal.SIGCONT)
                continue
            dataset, _ = write_dataset(tmp_path, 1, tag=f"window{attempt}")
            exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                      api_base=fake.base_url, scorers=SCORERS)
            if client.llen("evalq.offline") == 0:
                break  # the frozen worker's BRPOP took it
            os.kill(worker.process.pid, signal.SIGCONT)  # too late: it stays queued
            wait_for_experiment(exp, timeout=60)
        else:
            pytest.fail("could not catch the worker blocked in BRPOP")
        worker.stop(signal.SIGKILL)
        # The message is gone from Redis: neither queued nor unacknowledged.
        assert broker_pairs(client, exp) == set(), "kombu recorded it after all"
        rel_workers.start(env, name="brpop-window-b", concurrency=1)
        assert progress(exp)["pending"] == 1
        # Beat's sweep finds the stalled experiment and enqueues its missing item again.
        from datetime import timedelta

        from workers import app
        from workers.sweeper import sweep_stalled

        assert sweep_stalled(app, quiet_for=timedelta(seconds=0)) == {exp: 1}
        wait_for_experiment(exp, timeout=60)
        assert_exact(exp, 1)
        assert sweep_stalled(app, quiet_for=timedelta(seconds=0)) == {}  # nothing left
