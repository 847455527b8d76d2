"""Redis restarted mid-run, without persistence: the queued messages are lost.

What must hold: the worker reconnects by itself and keeps consuming, the producer can
enqueue again, and `evalq resume` re-enqueues exactly the (item, repeat)s that have no
Result, so the run completes with nothing doubled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from scheduler import enqueue_offline_run, progress, wait_for_experiment
from scheduler.cli import app as cli
from tests.fakellm import FakeLLM
from tests.reliability.harness import (
    SCORERS,
    Workers,
    assert_exact,
    slots_for,
    stored_results,
    wait_stable,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.support import EnvPatch, RedisServer

N_ITEMS = 400
runner = CliRunner()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(latency_ms=200, seed=2)
    yield server
    server.stop()


def _connected_lines(output: str) -> int:
    return output.count("Connected to redis://")


@pytest.mark.slow
def test_redis_restart_mid_run(tmp_path: Path, fake: FakeLLM, rel_redis: RedisServer,
                               rel_pg: str, rel_workers: Workers):
    env = worker_env(rel_redis.url, rel_pg, visibility_timeout_s=30, model_concurrency=8)
    with EnvPatch(**env):
        worker = rel_workers.start(env, name="redis-restart", concurrency=slots_for(8))
        dataset, _ = write_dataset(tmp_path, N_ITEMS)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                                  scorers=SCORERS)
        wait_until(lambda: stored_results(exp) >= N_ITEMS // 4, 240, "a quarter stored")

        rel_redis.stop()  # no persistence: every queued and unacked message is gone
        stopped_with = stored_results(exp)
        time.sleep(5)
        rel_redis.restart()
        broker = redis.Redis.from_url(rel_redis.url)
        assert broker.llen("evalq.offline") == broker.hlen("unacked") == 0

        # The worker reconnects by itself (same process, a second "Connected to").
        wait_until(lambda: _connected_lines(worker.output()) >= 2, 120,
                   "the worker reconnected to the restarted Redis")
        assert worker.process.poll() is None
        # What was in flight finishes; what was queued is lost, so the run stalls.
        stalled_at = wait_stable(lambda: stored_results(exp), quiet_s=5, timeout=120)
        state = progress(exp)
        assert state["status"] == "running" and state["pending"] == N_ITEMS - stalled_at > 0
        log_before_resume = len(worker.output())

        # The producer (this process, its pooled connections to the old server broken)
        # enqueues again: resume sends exactly the (item, repeat)s that have no Result.
        result = runner.invoke(cli, ["resume", str(exp), "--no-wait", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"experiment_id": exp,
                                             "enqueued": N_ITEMS - stalled_at}

        wait_for_experiment(exp, timeout=300)
        counts = assert_exact(exp, N_ITEMS)
        assert counts.error == 0, counts
        # The same worker process consumed the resumed tasks.
        assert worker.process.poll() is None
        assert "succeeded in" in worker.output()[log_before_resume:]
        calls = fake.stats()["total"]
        assert calls >= N_ITEMS
        print(f"\nRedis stopped with {stopped_with} results stored, stalled at {stalled_at}; "
              f"resume enqueued {N_ITEMS - stalled_at}; {calls - N_ITEMS} model calls "
              "repeated")
