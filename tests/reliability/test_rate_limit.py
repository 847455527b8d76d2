"""The shared rate limit across two real worker processes: the fake model server's own
arrival timestamps show at most the limit in every sliding 10 s window at close to full
speed, and a 429 with Retry-After seen by one worker pausing both."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.fakellm import FakeLLM
from scheduler import enqueue_offline_run, wait_for_experiment
from tests.factories import write_jsonl
from tests.support import EnvPatch, WorkerProcess

pytestmark = pytest.mark.slow

MODEL = "openai/fake"
RPM = 600  # 100 per 10 s window
TOLERANCE = 1.05  # arrival times carry the workers' own scheduling jitter


def max_in_window(stamps: list[float], width: float) -> int:
    """Most timestamps in any half-open window [t, t + width)."""
    stamps, best, lo = sorted(stamps), 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.fixture(scope="module")
def rl_workers(redis_url: str, pg_url: str) -> Iterator[list[WorkerProcess]]:
    """Two worker processes sharing the session's Redis and PostgreSQL, with a 600 rpm
    limit on the fake model (Retry-After is honoured up to 10 s). The test process sees
    the same settings, so it enqueues to the same broker."""
    from models.migrate import upgrade

    env = {"EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": pg_url,
           "EVALQ_POLL_INTERVAL_S": "0.2", "EVALQ_RETRY_INITIAL_S": "0.01",
           "EVALQ_RETRY_MAX_S": "10", "EVALQ_RATE_LIMITS": json.dumps({MODEL: {"rpm": RPM}}),
           "EVALQ_CHUNK_SIZE": "4"}  # small chunks: both workers get a share of every run
    with EnvPatch(**env):
        upgrade()
        started = [WorkerProcess.start(env, name=f"rl{i}", concurrency=32, wait_ready=False)
                   for i in range(2)]
        try:
            for worker in started:
                worker.wait_for("ready.", 60)
            yield started
        finally:
            for worker in started:
                worker.stop()


@pytest.fixture
def fresh_limits(redis_url: str) -> None:
    """No bucket or pause left over from an earlier test."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"evalq:rl:*{MODEL}"):
        client.delete(key)


def _run(tmp_path: Path, fake: FakeLLM, n: int) -> tuple[str, dict]:
    tag = uuid.uuid4().hex[:8]
    rows = [{"id": f"{tag}-{i}", "input": f"{tag} item {i}.", "expected": f"{tag} item {i}."}
            for i in range(n)]
    return tag, {"dataset": write_jsonl(tmp_path / f"rl-{tag}.jsonl", rows),
                 "model": MODEL, "api_base": fake.base_url, "cache": "off"}


def _succeeded(worker: WorkerProcess) -> int:
    return len(re.findall(r"Task evalq\.run_items?\[[^]]+\] succeeded", worker.output()))


def test_two_workers_stay_within_the_limit_in_every_10s_window(
        rl_workers: list[WorkerProcess], fresh_limits: None, fake_llm: FakeLLM, tmp_path: Path):
    fake_llm.configure(latency_ms=50)
    n = 400
    _, run = _run(tmp_path, fake_llm, n)
    summary = wait_for_experiment(enqueue_offline_run(**run), timeout=120)
    assert summary["counts"]["done"] == n, summary["counts"]
    arrivals = sorted(fake_llm.stats()["arrivals"])
    assert len(arrivals) == n
    window_max = max_in_window(arrivals, 10.0)
    span = arrivals[-1] - arrivals[0]
    rate = (len(arrivals) - 1) / span * 60
    print(f"\n{n} requests in {span:.1f}s: {rate:.0f} rpm; max {window_max} per 10 s, "
          f"{max_in_window(arrivals, 1.0)} per 1 s")
    assert window_max <= RPM / 6 * TOLERANCE, f"{window_max} requests in one 10 s window"
    assert rate >= 0.8 * RPM, f"throughput {rate:.0f} rpm, limit {RPM}"
    assert all(_succeeded(w) > 0 for w in rl_workers), "both workers should have run items"


def test_a_429_seen_by_one_worker_pauses_both(
        rl_workers: list[WorkerProcess], fresh_limits: None, fake_llm: FakeLLM, tmp_path: Path):
    fake_llm.configure(latency_ms=50)
    n = 120
    tag, run = _run(tmp_path, fake_llm, n)
    marker = f"{tag} item 40."
    fake_llm.script([{"status": 429, "headers": {"Retry-After": "3"}, "match": marker,
                      "latency_ms": 0}])
    done_before = [_succeeded(w) for w in rl_workers]
    summary = wait_for_experiment(enqueue_offline_run(**run), timeout=90)
    assert summary["counts"]["done"] == n, summary["counts"]
    assert all(_succeeded(w) > d for w, d in zip(rl_workers, done_before, strict=True))

    hits = sorted(r["time"] for r in fake_llm.requests() if marker in json.dumps(r["body"]))
    assert len(hits) == 2, "the item was refused once, then retried"
    refused, retried = hits
    arrivals = sorted(fake_llm.stats()["arrivals"])
    assert len(arrivals) == n + 1
    # Requests admitted before the pause was set may still land just after the 429.
    during = [round(t - refused, 2) for t in arrivals if refused + 0.5 <= t < refused + 2.9]
    around = [round(t - refused, 2) for t in arrivals if refused - 1 <= t <= refused + 4]
    print(f"\narrivals around the 429 (s): {around}")
    assert during == [], f"requests reached the server during the pause at +{during} s"
    assert retried - refused >= 2.9
    assert any(refused - 1 <= t < refused for t in arrivals), "the run was not in full flow"
    assert any(refused + 3 <= t < refused + 4 and t != retried for t in arrivals)
