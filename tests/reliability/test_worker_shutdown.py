"""SIGTERM to a worker with tasks in flight: it finishes or requeues them promptly and
exits; a new worker completes the experiment with nothing lost or doubled.

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

from scheduler import enqueue_offline_run, wait_for_experiment
from tests.fakellm import FakeLLM
from tests.reliability.harness import (
    SCORERS,
    Workers,
    assert_exact,
    items_per_task,
    slots_for,
    stored_results,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.support import EnvPatch, RedisServer, WorkerProcess

MARGIN_S = 20.0


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
    soft_s, n_items = 10.0, 120
    fake.reset()
    fake.configure(latency_ms=2000)
    env = worker_env(rel_redis.url, rel_pg, soft_shutdown_s=soft_s, model_concurrency=32)
    broker = redis.Redis.from_url(rel_redis.url)
    with EnvPatch(**env):
        slots = slots_for(32)
        first = rel_workers.start(env, name="sigterm-a", concurrency=slots)
        dataset, _ = write_dataset(tmp_path, n_items)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                                  scorers=SCORERS)
        wait_until(lambda: fake.stats()["in_flight"] >= 16, 120, "model calls in flight")
        in_flight = fake.stats()["in_flight"]
        exited_s = _sigterm(first, soft_s + MARGIN_S)
        stored_at_exit = stored_results(exp)
        assert stored_at_exit < n_items, "the run finished before SIGTERM"
        # Finished or put back: nothing is left waiting for the visibility timeout.
        assert broker.hlen("unacked") == 0
        assert broker.llen("evalq.offline") > 0
        assert "Warm shutdown" in first.output() or "Soft Shutdown" in first.output()

        rel_workers.start(env, name="sigterm-b", concurrency=slots)
        wait_for_experiment(exp, timeout=300)
        counts = assert_exact(exp, n_items)
        assert counts.error == 0, counts
        calls = fake.stats()["total"]
        # Work the worker held at SIGTERM ran at most twice (finished, or requeued and
        # redone).
        assert n_items <= calls <= n_items + slots * items_per_task(), calls
        print(f"\nSIGTERM with {in_flight} model calls in flight: exited after "
              f"{exited_s:.1f} s (soft_shutdown_s={soft_s:g}) with {stored_at_exit} results "
              f"stored; {calls - n_items} model calls repeated")
