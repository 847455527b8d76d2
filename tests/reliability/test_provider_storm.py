"""A provider in a storm: rate limits, server errors and hung requests, at random.

Every item still ends with exactly one Result, ok or error; retried errors are only the
retryable kinds and only after the last attempt; permanent errors (400, 401) are never
retried. Attempts are checked against what the fake server actually received.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.fakellm import FakeLLM, messages_text
from models.db import session_scope
from scheduler import enqueue_offline_run, experiment_report, wait_for_experiment
from tests.reliability.harness import (
    SCORERS,
    Workers,
    assert_exact,
    item_text,
    slots_for,
    worker_env,
    write_dataset,
)
from tests.support import EnvPatch, RedisServer

MAX_ATTEMPTS = 4
# What workers.llm.calls.is_retryable accepts, by the class names stored in Result.error_type.
RETRYABLE = {"RateLimitError", "Timeout", "APIConnectionError", "InternalServerError",
             "ServiceUnavailableError", "BadGatewayError"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(latency_ms=20, seed=4)
    yield server
    server.stop()


@pytest.fixture
def storm_env(rel_redis: RedisServer, rel_pg: str, rel_workers: Workers
              ) -> Iterator[dict[str, str]]:
    env = worker_env(rel_redis.url, rel_pg, max_attempts=MAX_ATTEMPTS, request_timeout_s=2,
                     retry_initial_s=0.05, retry_max_s=1, model_concurrency=16)
    rel_workers.start(env, name="storm", concurrency=slots_for(32))
    with EnvPatch(**env):
        yield env


def _results(experiment_id: int) -> list[sa.Row]:
    with session_scope() as s:
        return list(s.execute(sa.text(
            "SELECT r.status, r.attempts, r.error_type, r.output, r.error, i.input "
            "FROM result r JOIN dataset_item i ON i.id = r.item_id "
            "WHERE r.experiment_id = :e"), {"e": experiment_id}).all())


@pytest.mark.slow
def test_provider_storm(tmp_path: Path, fake: FakeLLM, storm_env: dict[str, str]):
    n_items = 300
    fake.reset()
    fake.configure(fault_rates={"429": 0.3, "500": 0.05, "timeout": 0.02}, retry_after="0.2")
    dataset, tag = write_dataset(tmp_path, n_items)
    # Some rate limits come without Retry-After (backoff then applies): scripted first
    # answers of 20 items, before the random faults.
    fake.script([{"match": item_text(tag, i), "status": 429} for i in range(0, 200, 10)])
    exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                              scorers=SCORERS)
    wait_for_experiment(exp, timeout=300)

    counts = assert_exact(exp, n_items)
    rows = _results(exp)
    assert len(rows) == n_items
    for row in rows:
        assert 1 <= row.attempts <= MAX_ATTEMPTS, row
        if row.status == "ok":
            assert row.error is None and row.output == row.input, row
        else:
            assert row.status == "error", row
            # Only transient failures, and only once every attempt was spent.
            assert row.error_type in RETRYABLE, row
            assert row.attempts == MAX_ATTEMPTS, row
    retried = sum(1 for r in rows if r.attempts > 1)
    assert retried >= 30, retried  # ~37% of first attempts fail
    # Every attempt is one request the server received: no hidden retries, none lost.
    stats = fake.stats()
    attempts = sum(r.attempts for r in rows)
    assert stats["total"] == attempts, (stats["by_status"], attempts)
    assert stats["script_pending"] == 0
    by_status = stats["by_status"]
    assert by_status["429"] > 0 and by_status["500"] > 0 and by_status["disconnected"] > 0
    report = experiment_report(exp)
    assert (report["attempts"]["total"], report["attempts"]["retried_results"]) == (
        attempts, retried)
    assert sum(report["errors"].values()) == counts.error
    print(f"\nstorm: {n_items} items, {attempts} requests {dict(by_status)}; {retried} "
          f"items retried; {counts.error} errors after {MAX_ATTEMPTS} attempts "
          f"{report['errors']}; wall {report['wall_time_s']} s")


def test_permanent_errors_are_never_retried(tmp_path: Path, fake: FakeLLM,
                                            storm_env: dict[str, str]):
    fake.reset()
    dataset, tag = write_dataset(tmp_path, 30)
    bad = {item_text(tag, i): 400 for i in range(0, 10, 2)}
    auth = {item_text(tag, i): 401 for i in range(1, 10, 2)}
    permanent = bad | auth
    # Each answer is scripted 5 times: a retry would meet the same error again.
    fake.script([{"match": text, "status": status, "times": 5}
                 for text, status in permanent.items()])
    exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                              scorers=SCORERS)
    wait_for_experiment(exp, timeout=180)

    counts = assert_exact(exp, 30)
    assert (counts.ok, counts.error) == (20, 10)
    rows = {r.input: r for r in _results(exp)}
    for text, status in permanent.items():
        row = rows[text]
        assert row.status == "error" and row.attempts == 1, row
        expected = "BadRequestError" if status == 400 else "AuthenticationError"
        assert row.error_type == expected, row
    seen: dict[str, int] = {}
    for request in fake.requests():
        for text in messages_text(request["body"]["messages"], "user"):
            seen[text] = seen.get(text, 0) + 1
    assert {text: seen.get(text, 0) for text in permanent} == dict.fromkeys(permanent, 1)
    assert fake.stats()["total"] == 30  # and every other item was called once too
    assert fake.stats()["script_pending"] == 10  # each script entry used once of 5
