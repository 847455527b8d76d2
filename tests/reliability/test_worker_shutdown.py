"""SIGTERM to a worker with tasks in flight: it takes no new task, finishes the ones in
flight, requeues what it had prefetched and exits promptly; a new worker completes the
experiment with nothing lost or doubled.

The requeue must not depend on the visibility timeout (an hour here): when the worker's
broker connection closes, kombu puts every message it took and did not acknowledge back
on the queue, so Redis' unacked set is empty once the worker has exited.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.fakellm import FakeLLM
from scheduler import enqueue_offline_run, wait_for_experiment
from tests.reliability.harness import (
    SCORERS,
    Workers,
    all_pairs,
    assert_exact,
    broker_pairs,
    items_per_task,
    result_pairs,
    slots_for,
    stored_results,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.support import EnvPatch, RedisServer, WorkerProcess

LATENCY_S = 2.0  # every model call of the test takes this long
# Celery's own warm shutdown after the last task returned (consumer, pool, connections):
# about 2 s on the test machine. Below the soft-shutdown period set in the test, which a
# warm shutdown never waits for (it only applies to a cold shutdown).
SHUTDOWN_S = 6.0
MODEL_CONCURRENCY = 32


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(seed=5)
    yield server
    server.stop()


def _sigterm(worker: WorkerProcess, within_s: float) -> float:
    """SIGTERM the worker; seconds until it exited (fails if it is still running)."""
    sent = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        worker.process.wait(within_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running {within_s} s after SIGTERM:\n"
                             f"{worker.output()[-2000:]}") from None
    return time.monotonic() - sent


@pytest.mark.slow
def test_sigterm_soft_shutdown(tmp_path: Path, fake: FakeLLM, rel_redis: RedisServer,
                               rel_pg: str, rel_workers: Workers):
    """README, guarantee 8: on SIGTERM a worker takes no new task, finishes the ones in
    flight and exits promptly; its prefetched, unstarted tasks go back to the queue at
    once; nothing is lost."""
    soft_s, n_items = 10.0, 120
    fake.reset()
    fake.configure(latency_ms=int(LATENCY_S * 1000))
    env = worker_env(rel_redis.url, rel_pg, soft_shutdown_s=soft_s,
                     model_concurrency=MODEL_CONCURRENCY)
    broker = redis.Redis.from_url(rel_redis.url)
    with EnvPatch(**env):
        slots = slots_for(MODEL_CONCURRENCY)
        held = slots * items_per_task()  # items of the tasks the worker runs at once
        first = rel_workers.start(env, name="sigterm-a", concurrency=slots)
        dataset, _ = write_dataset(tmp_path, n_items)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                                  scorers=SCORERS)
        wait_until(lambda: fake.stats()["in_flight"] >= min(held, MODEL_CONCURRENCY), 120,
                   "every slot's model calls in flight")
        stored_before, in_flight = stored_results(exp), fake.stats()["in_flight"]
        exited_s = _sigterm(first, LATENCY_S + SHUTDOWN_S)
        stored_at_exit, calls_at_exit = stored_results(exp), fake.stats()["total"]
        assert stored_at_exit < n_items, "the run finished before SIGTERM"
        # Finished the tasks in flight: every model call it made has its Result stored.
        assert stored_at_exit == calls_at_exit >= stored_before + in_flight, \
            (stored_before, in_flight, stored_at_exit, calls_at_exit)
        # Took no new task: all its calls fit in the tasks it was running at SIGTERM.
        assert calls_at_exit - stored_before <= held, (stored_before, calls_at_exit, held)
        # Put back at once: every (item, repeat) without a Result is in a queued message,
        # none waits in the unacked set for the visibility timeout (an hour here).
        assert broker.hlen("unacked") == 0
        assert broker_pairs(broker, exp) == all_pairs(exp) - result_pairs(exp)
        assert "Warm shutdown" in first.output() or "Soft Shutdown" in first.output()

        rel_workers.start(env, name="sigterm-b", concurrency=slots)
        wait_for_experiment(exp, timeout=300)
        counts = assert_exact(exp, n_items)
        assert counts.error == 0, counts
        calls = fake.stats()["total"]
        # Nothing was run twice: what the first worker stored was skipped by the second.
        assert calls == n_items, calls
        print(f"\nSIGTERM with {in_flight} model calls in flight: exited after "
              f"{exited_s:.1f} s ({LATENCY_S:g} s model calls, bound "
              f"{LATENCY_S + SHUTDOWN_S:g} s) with {stored_at_exit} results stored")
