"""RabbitMQ as the broker: real RabbitMQ (a vhost of the session's own), real PostgreSQL,
real Celery worker, beat and Flower subprocesses, real HTTP to the fake model server.

Offline runs through the CLI, online scoring from beat ticks and from `evalq online
tick`, Flower, the response cache (in the database without a Redis URL, in Redis with
EVALQ_CACHE_URL), the shared rate limiter's Redis, the refusal of rate limits that no
Redis could share, and a broker restart mid-run that loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.settings import Settings
from models.tables import Experiment, OnlineEvaluator, ResponseCache, Result, Score
from scheduler.cli.main import app
from scheduler.evaluators import add_evaluator
from scheduler.ingest.records import record_runs
from tests.factories import counts, write_jsonl
from tests.support import REPO, EnvPatch, RabbitBroker, WorkerProcess, free_port, http_get
from workers.llm.cache import DatabaseStore, RedisStore, store_for
from workers.llm.ratelimit import (
    LocalRateLimiter,
    RedisRateLimiter,
    limiter_for,
    require_shared_rate_limits,
)
from workers.llm.redis_url import RedisRequired
from workers.llm.redis_url import redis_url as shared_redis_url

runner = CliRunner()
AMQP = "amqp://evalq:hunter2@rabbit.internal:5672/evalq"
LIMITS = {"openai/fake": {"rpm": 6000}}


# --- one rule for the rate limiter's and the cache's Redis (no services needed) ---------

def test_the_redis_is_the_cache_url_else_a_redis_broker_else_none():
    assert shared_redis_url(Settings(broker_url="redis://b:6379/0")) == "redis://b:6379/0"
    assert shared_redis_url(Settings(broker_url="redis://b:6379/0",
                                     cache_url="redis://c:6379/1")) == "redis://c:6379/1"
    assert shared_redis_url(Settings(broker_url=AMQP, cache_url="rediss://c:6380/1")) \
        == "rediss://c:6380/1"
    assert shared_redis_url(Settings(broker_url=AMQP)) is None
    assert shared_redis_url(Settings(broker_url=None)) is None  # embedded
    with pytest.raises(RedisRequired, match="EVALQ_CACHE_URL must be a Redis URL") as err:
        shared_redis_url(Settings(broker_url=AMQP, cache_url=AMQP))
    assert "hunter2" not in str(err.value)  # a URL's credentials never reach a message


def test_rate_limits_without_a_redis_are_refused_in_distributed_mode_only():
    refused = Settings(broker_url=AMQP, rate_limits=LIMITS)
    with pytest.raises(RedisRequired) as err:
        require_shared_rate_limits(refused)
    message = str(err.value)
    assert "EVALQ_CACHE_URL=redis://" in message and "openai/fake" in message
    assert "amqp://" in message and "hunter2" not in message
    with pytest.raises(RedisRequired, match="EVALQ_CACHE_URL=redis://"):
        asyncio.run(_limiter(refused))  # never a per-process limiter in disguise
    for fine in (Settings(broker_url=AMQP, rate_limits=LIMITS, cache_url="redis://c:6379/1"),
                 Settings(broker_url=AMQP),  # no limits: nothing to share
                 Settings(broker_url="redis://b:6379/0", rate_limits=LIMITS),
                 Settings(broker_url=None, rate_limits=LIMITS)):  # embedded: one process
        require_shared_rate_limits(fine)
    assert isinstance(asyncio.run(_limiter(Settings(broker_url=None, rate_limits=LIMITS))),
                      LocalRateLimiter)


def test_cache_and_limiter_use_the_cache_url_with_rabbitmq(redis_url: str):
    with_redis = Settings(broker_url=AMQP, cache_url=redis_url, rate_limits=LIMITS)
    store = store_for(with_redis)
    assert isinstance(store, RedisStore)
    assert store.client.connection_pool.connection_kwargs["port"] == \
        int(redis_url.rsplit(":", 1)[1].split("/")[0])
    limiter = asyncio.run(_limiter(with_redis))
    assert isinstance(limiter, RedisRateLimiter) and limiter.url == redis_url
    assert isinstance(store_for(Settings(broker_url=AMQP)), DatabaseStore)


async def _limiter(settings: Settings) -> Any:
    return limiter_for(settings)


# --- end to end on RabbitMQ ---------------------------------------------------------------

def _dataset(tmp_path: Path, n: int, tag: str | None = None) -> Path:
    tag = tag or uuid.uuid4().hex[:6]
    rows = [{"id": f"{tag}-{i}", "input": f"{tag} item {i}",
             "expected": f"{tag} item {i}" if i % 3 else "something else"} for i in range(n)]
    return write_jsonl(tmp_path / f"ds-{tag}.jsonl", rows)


def _rows(exp_id: int) -> tuple[int, int, int]:
    """(Results, distinct (item, repeat)s, Scores) of an experiment."""
    with session_scope() as s:
        results = s.exec(select(func.count()).select_from(Result)
                         .where(Result.experiment_id == exp_id)).one()
        distinct = s.exec(select(func.count()).select_from(
            select(Result.item_id, Result.repeat).where(Result.experiment_id == exp_id)
            .distinct().subquery())).one()
        scores = s.exec(select(func.count()).select_from(Score)
                        .where(Score.experiment_id == exp_id)).one()
    return results, distinct, scores


def _run(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def test_cli_run_through_rabbitmq(distributed_rabbitmq: WorkerProcess, rabbitmq: RabbitBroker,
                                  fake_llm: FakeLLM, tmp_path: Path):
    summary = _run("run", str(_dataset(tmp_path, 9)), "--model", "openai/fake", "--api-base",
                   fake_llm.base_url, "--scorer", "exact_match", "--scorer", "contains",
                   "--repeats", "2", "--json")
    assert summary["status"] == "completed"
    assert summary["report"]["mode"] == "distributed"
    assert summary["counts"] == counts(18, done=18, failed=0)
    assert summary["scores"]["exact_match"] == pytest.approx(6 / 9)
    assert fake_llm.stats()["total"] == 18
    assert _rows(summary["experiment_id"]) == (18, 18, 36)
    assert "Connected to amqp://guest:**@127.0.0.1:5672/" in distributed_rabbitmq.output()
    # The worker ran them: Celery logs each task it finished (its start-up task list
    # does not match this).
    _wait(lambda: re.search(r"Task evalq\.run_items\[[^\]]+\] succeeded in",
                            distributed_rabbitmq.output()), 10, "the worker's run_items")
    # Every message was acknowledged: nothing ready or unacknowledged is left behind.
    _wait(lambda: rabbitmq.queues().get("evalq.offline") == (0, 0), 30,
          "evalq.offline drained and acknowledged")


def test_response_cache_is_in_the_database_without_a_redis(distributed_rabbitmq: WorkerProcess,
                                                            fake_llm: FakeLLM, tmp_path: Path):
    def cached_rows() -> int:
        with session_scope() as s:
            return int(s.exec(select(func.count()).select_from(ResponseCache)).one())

    dataset, before = _dataset(tmp_path, 6), cached_rows()
    args = ["run", str(dataset), "--model", "openai/fake", "--api-base", fake_llm.base_url,
            "--cache", "--json"]
    first = _run(*args)
    assert first["counts"] == counts(6, done=6) and fake_llm.stats()["total"] == 6
    assert cached_rows() == before + 6  # in PostgreSQL, shared by every worker
    second = _run(*args)
    assert second["counts"] == counts(6, done=6)
    assert fake_llm.stats()["total"] == 6  # every response came from the cache
    with session_scope() as s:
        flags = s.exec(select(Result.cached)
                       .where(Result.experiment_id == second["experiment_id"])).all()
    assert flags == [True] * 6


def _runs(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "input": f"question {i}",
             "output": "ok answer" if i % 4 else "bad answer", "status": "COMPLETE"}
            for i in range(n)]


def _scores_of(evaluator: str) -> list[tuple[int, float | None]]:
    """(production run id, value) of every Score of one online evaluator."""
    with session_scope() as s:
        ev_id = s.exec(select(OnlineEvaluator.id)
                       .where(OnlineEvaluator.name == evaluator)).one()
        rows = s.exec(select(Score.subject_id, Score.value)
                      .where(Score.evaluator_id == ev_id)).all()
    return [(subject, value) for subject, value in rows]


@pytest.mark.slow
def test_online_scoring_through_rabbitmq(distributed_rabbitmq: WorkerProcess, rabbitmq_url: str,
                                         pg_url: str, tmp_path: Path):
    tag = uuid.uuid4().hex[:6]
    name, source = f"rabbit-{tag}", f"src-{tag}"
    add_evaluator(name, scorers=[{"type": "contains", "value": "ok"}], every="1s",
                  batch_size=500, filters=[f"source={source}"])
    # 1. The CLI's tick claims here and sends the scoring to the worker through RabbitMQ.
    record_runs(_runs(24, "cli"), source=source)
    assert _run("online", "tick", name, "--json") == {"claimed": 24, "enqueued": True}
    _wait(lambda: len(_scores_of(name)) >= 24, 60, "24 runs scored")
    # 2. Beat's tick goes through RabbitMQ to the worker, which claims and enqueues.
    env = {"EVALQ_BROKER_URL": rabbitmq_url, "EVALQ_DATABASE_URL": pg_url,
           "EVALQ_TICK_INTERVAL_S": "0.5"}
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "--loglevel", "INFO",
         "--schedule", str(tmp_path / "beat-schedule")], cwd=REPO,
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        record_runs(_runs(16, "beat"), source=source)
        _wait(lambda: len(_scores_of(name)) >= 40, 90, "40 runs scored")
        _wait(lambda: re.search(r"Task evalq\.online_tick\[[^\]]+\] succeeded in",
                                distributed_rabbitmq.output()), 10, "a tick sent by beat")
        time.sleep(2.0)  # more ticks: nothing is scored twice
    finally:
        beat.terminate()
        beat.wait(20)
    scores = _scores_of(name)
    per_run = Counter(subject for subject, _ in scores)
    assert len(per_run) == 40 and set(per_run.values()) == {1}
    assert Counter(value for _, value in scores) == {1.0: 30, 0.0: 10}  # 3 "ok" runs in 4


# --- Flower -------------------------------------------------------------------------------

FLOWER_USER, FLOWER_PASSWORD = "evalq", "flower-rabbit-pw"


def _get(url: str, auth: bool = True) -> tuple[int, bytes]:
    return http_get(url, (FLOWER_USER, FLOWER_PASSWORD) if auth else None)


@pytest.fixture
def flower_on_rabbitmq(distributed_rabbitmq: WorkerProcess, rabbitmq_url: str) -> Iterator[str]:
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"evalq-flower-rabbit-{os.getpid()}.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}",
             "--address=127.0.0.1", f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}"],
            cwd=REPO, env={**os.environ, "EVALQ_BROKER_URL": rabbitmq_url},
            stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(f"{url}/api/workers")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"flower exited: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        else:
            pytest.fail(f"flower did not answer in 60 s: {log.read_text()[-2000:]}")
        time.sleep(1.0)  # let Flower's event receiver attach before tasks run
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_flower_shows_the_tasks_on_rabbitmq(flower_on_rabbitmq: str, fake_llm: FakeLLM,
                                            tmp_path: Path):
    from scheduler import enqueue_offline_run, wait_for_experiment

    assert _get(f"{flower_on_rabbitmq}/api/tasks", auth=False)[0] == 401
    exp_id = enqueue_offline_run(dataset=_dataset(tmp_path, 4), model="openai/fake",
                                 api_base=fake_llm.base_url)
    wait_for_experiment(exp_id, timeout=60)

    def ours() -> list[dict[str, Any]]:
        status, body = _get(f"{flower_on_rabbitmq}/api/tasks?taskname=evalq.run_items"
                            "&limit=1000")
        assert status == 200
        tasks = [t for t in json.loads(body).values()
                 if re.match(rf"[\[(]{exp_id},", str(t.get("args", "")))]
        return tasks if tasks and all(t["state"] == "SUCCESS" for t in tasks) else []

    tasks = _wait(ours, 30, "Flower shows the experiment's tasks as SUCCESS")
    assert {t["name"] for t in tasks} == {"evalq.run_items"}
    status, body = _get(f"{flower_on_rabbitmq}/api/workers?refresh=1")
    assert status == 200 and any(name.startswith("rabbit-") for name in json.loads(body))


# --- rate limits need a Redis; EVALQ_CACHE_URL gives it -------------------------------------


def test_worker_refuses_rate_limits_without_a_redis(rabbitmq_url: str, own_pg_url: str):
    worker = WorkerProcess.start(
        {"EVALQ_BROKER_URL": rabbitmq_url, "EVALQ_DATABASE_URL": own_pg_url,
         "EVALQ_RATE_LIMITS": json.dumps(LIMITS)}, name="rabbit-limits", wait_ready=False)
    code = worker.process.wait(timeout=60)
    output = worker.output()
    assert code != 0
    assert "evalq worker cannot start" in output and "EVALQ_CACHE_URL=redis://" in output
    assert "ready." not in output


def test_evalq_run_refuses_rate_limits_without_a_redis(distributed_rabbitmq: WorkerProcess,
                                                       fake_llm: FakeLLM, tmp_path: Path):
    def experiments() -> int:
        with session_scope() as s:
            return int(s.exec(select(func.count()).select_from(Experiment)).one())

    before = experiments()
    with EnvPatch(EVALQ_RATE_LIMITS=json.dumps(LIMITS)):
        result = runner.invoke(app, ["run", str(_dataset(tmp_path, 3)), "--model",
                                     "openai/fake", "--api-base", fake_llm.base_url,
                                     "--no-wait"])
    assert result.exit_code == 2, result.stdout
    assert "EVALQ_CACHE_URL=redis://" in result.stderr
    assert experiments() == before  # refused before anything was written


def _redis_commands(client: redis.Redis, name: str) -> int:
    """How many times Redis ran command `name` (e.g. "evalsha")."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def test_rate_limits_and_cache_use_evalq_cache_url(redis_url: str, own_pg_url: str,
                                                   fake_llm: FakeLLM, tmp_path: Path):
    """A worker on RabbitMQ with EVALQ_CACHE_URL starts with rate limits, throttles
    through that Redis and caches responses there, not in the database."""
    broker = RabbitBroker.create()  # its own vhost: no other worker takes these tasks
    env = {"EVALQ_BROKER_URL": broker.url, "EVALQ_DATABASE_URL": own_pg_url,
           "EVALQ_CACHE_URL": redis_url, "EVALQ_RATE_LIMITS": json.dumps(LIMITS),
           "EVALQ_POLL_INTERVAL_S": "0.1"}
    observer = redis.Redis.from_url(redis_url)
    for key in observer.scan_iter("evalq:cache:*"):
        observer.delete(key)
    scripts_before = _redis_commands(observer, "evalsha") + _redis_commands(observer, "eval")
    try:
        with EnvPatch(**env):
            worker = WorkerProcess.start(env, name="rabbit-redis")
            try:
                with session_scope() as s:
                    db_cache_before = s.exec(select(func.count())
                                             .select_from(ResponseCache)).one()
                summary = _run("run", str(_dataset(tmp_path, 5)), "--model", "openai/fake",
                               "--api-base", fake_llm.base_url, "--cache", "--json")
                assert summary["counts"] == counts(5, done=5)
                with session_scope() as s:
                    assert s.exec(select(func.count())
                                  .select_from(ResponseCache)).one() == db_cache_before
            finally:
                worker.stop()
    finally:
        broker.delete()
    assert len(list(observer.scan_iter("evalq:cache:*"))) == 5
    scripts = _redis_commands(observer, "evalsha") + _redis_commands(observer, "eval")
    assert scripts - scripts_before >= 5  # one acquire per call, at least


# --- what RabbitMQ does when a worker or the broker goes away ---------------------------

@pytest.mark.slow
def test_a_killed_workers_tasks_are_back_in_the_queue_at_once(own_pg_url: str,
                                                               tmp_path: Path):
    """Broker-side behaviour the README states: the moment a consumer's connection drops,
    RabbitMQ makes its unacknowledged deliveries ready again (Redis would hold them for
    the visibility timeout); another worker then completes the run with exact counts."""
    from scheduler import enqueue_offline_run, wait_for_experiment

    n = 6
    fake = FakeLLM.start(latency_ms=3000, seed=4)
    broker = RabbitBroker.create()
    env = {"EVALQ_BROKER_URL": broker.url, "EVALQ_DATABASE_URL": own_pg_url,
           "EVALQ_POLL_INTERVAL_S": "0.2", "EVALQ_CHUNK_SIZE": "1"}
    try:
        with EnvPatch(**env):
            first = WorkerProcess.start(env, name="rabbit-killed", concurrency=2)
            try:
                exp_id = enqueue_offline_run(dataset=_dataset(tmp_path, n), model="openai/fake",
                                             api_base=fake.base_url, scorers=["contains"])
                _wait(lambda: broker.queues().get("evalq.offline") == (n - 2, 2), 30,
                      "two tasks delivered to the worker, unacknowledged")
                first.stop(signal.SIGKILL)
                killed_at = time.monotonic()
                _wait(lambda: broker.queues().get("evalq.offline") == (n, 0), 10,
                      "the killed worker's tasks ready again")
                assert time.monotonic() - killed_at < 10
                assert _rows(exp_id)[0] == 0  # nothing finished: all six come back
            finally:
                first.stop(signal.SIGKILL)
            second = WorkerProcess.start(env, name="rabbit-survivor", concurrency=6)
            try:
                summary = wait_for_experiment(exp_id, timeout=120)
                assert summary["counts"] == counts(n, done=n)
                assert _rows(exp_id) == (n, n, n)
            finally:
                second.stop()
    finally:
        broker.delete()
        fake.stop()

# --- a broker restart ---------------------------------------------------------------------

@pytest.mark.slow
def test_rabbitmq_restart_mid_run_loses_nothing(own_pg_url: str, tmp_path: Path):
    """The RabbitMQ app stopped and started mid-run: the worker reconnects by itself, the
    durable queue kept its persistent messages and the unacknowledged ones are delivered
    again, so the run completes with exact counts and no `evalq resume`."""
    from scheduler import enqueue_offline_run, wait_for_experiment

    n = 240
    fake = FakeLLM.start(latency_ms=200, seed=3)
    broker = RabbitBroker.create()
    env = {"EVALQ_BROKER_URL": broker.url, "EVALQ_DATABASE_URL": own_pg_url,
           "EVALQ_POLL_INTERVAL_S": "0.2", "EVALQ_CHUNK_SIZE": "4",
           "EVALQ_MODEL_CONCURRENCY": "8"}
    try:
        with EnvPatch(**env):
            worker = WorkerProcess.start(env, name="rabbit-restart", concurrency=2)
            try:
                exp_id = enqueue_offline_run(dataset=_dataset(tmp_path, n), model="openai/fake",
                                             api_base=fake.base_url,
                                             scorers=["exact_match", "contains"])
                _wait(lambda: _rows(exp_id)[0] >= n // 5, 120, "a fifth stored")
                broker.restart()
                assert _rows(exp_id)[0] < n, "the run ended before the restart"
                _wait(lambda: worker.output().count("Connected to amqp://") >= 2, 120,
                      "the worker reconnected")
                summary = wait_for_experiment(exp_id, timeout=240)
                assert summary["counts"] == counts(n, done=n)
                assert _rows(exp_id) == (n, n, 2 * n)
                assert worker.process.poll() is None
                # Redelivered copies may run after the last Result: nothing doubles.
                time.sleep(2.0)
                assert _rows(exp_id) == (n, n, 2 * n)
                with session_scope() as s:
                    exp = s.get(Experiment, exp_id)
                    assert exp is not None and (exp.n_done, exp.n_failed) == (n, 0)
            finally:
                worker.stop()
    finally:
        broker.delete()
        fake.stop()
