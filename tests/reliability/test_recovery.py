"""Recovery beyond a worker kill, with default settings and no command run by hand:
online claims of a dead worker, a killed beat, a producer killed mid-enqueue, one task
delivered twice at once, and a broker restarted mid-run.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.fakellm import FakeLLM
from models.db import session_scope
from scheduler import enqueue_offline_run, wait_for_experiment
from scheduler.evaluators import add_evaluator
from scheduler.ingest.records import record_runs
from tests.reliability.harness import (
    SCORERS,
    Workers,
    assert_exact,
    held_by,
    report_recovery,
    stored_results,
    wait_until,
    worker_env,
    write_dataset,
)
from tests.support import REPO, Broker, EnvPatch

RECOVERY_S = 60  # README "Guarantees"
JUDGE_REPLY = json.dumps({"reasoning": "fine", "score": 4})


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM.start(seed=4)
    yield server
    server.stop()


def _one(sql: str, **params: object) -> int:
    with session_scope() as s:
        return int(s.execute(sa.text(sql), params).scalar_one())


def _evaluator_id(name: str) -> int:
    return _one("SELECT id FROM online_evaluator WHERE name = :n", n=name)


def _scores_per_run(evaluator_id: int) -> Counter[int]:
    with session_scope() as s:
        rows = s.execute(sa.text("SELECT subject_id FROM score WHERE evaluator_id = :e"),
                         {"e": evaluator_id}).scalars().all()
    return Counter(rows)


def _runs(n: int, tag: str) -> list[dict]:
    return [{"id": f"{tag}-{i}", "input": f"q{i}", "output": f"ok {i}"} for i in range(n)]


@pytest.mark.slow
def test_online_claims_of_a_dead_worker_are_scored_again(fake: FakeLLM, rel_broker: Broker,
                                                         rel_pg: str, rel_workers: Workers):
    """A worker dies while judging a chunk of claimed runs: they are scored by another
    worker within RECOVERY_S (not after EVALQ_CLAIM_TIMEOUT_S), one Score each."""
    fake.reset()
    fake.configure(latency_ms=3000, default_reply=JUDGE_REPLY)
    env = worker_env(rel_broker.url, rel_pg, ingest_settle_s=0)
    tag = f"online-kill-{uuid.uuid4().hex[:6]}"
    with EnvPatch(**env):
        victim_name = f"judge-{rel_broker.kind}"
        victim = rel_workers.start(env, name=victim_name, concurrency=2)
        add_evaluator(tag, scorers=[{"type": "llm_rubric", "criteria": "polite",
                                     "model": "openai/fake", "api_base": fake.base_url}],
                      every="1s", batch_size=500)
        evaluator = {"id": _evaluator_id(tag)}
        record_runs(_runs(40, tag), source=tag)
        from workers.online.tick import tick_and_enqueue
        from workers.tasks import score_runs

        assert tick_and_enqueue(score_runs, evaluator_ids=[evaluator["id"]], force=True) == 40
        held = wait_until(lambda: held_by(victim_name, "evalq.score_runs"), 60,
                          "the victim judging claimed runs")
        victim.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        rel_workers.start(env, name=f"judge-b-{rel_broker.kind}", concurrency=2)
        wait_until(lambda: len(_scores_per_run(evaluator["id"])) == 40, RECOVERY_S,
                   "every claimed run scored")
        report_recovery("online claims of a SIGKILLed worker scored again", rel_broker.kind,
                        time.monotonic() - killed_at, held=len(held))
        time.sleep(2)
        per_run = _scores_per_run(evaluator["id"])
        assert len(per_run) == 40 and set(per_run.values()) == {1}, per_run
        assert _one("SELECT count(*) FROM online_claim WHERE evaluator_id = :e "
                    "AND status <> 'done'", e=evaluator["id"]) == 0


def _beat(env: dict[str, str], schedule: Path) -> subprocess.Popen[bytes]:
    import os

    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "--loglevel", "INFO",
         "--schedule", str(schedule)], cwd=REPO, env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_beat_killed_and_started_again(tmp_path: Path, rel_broker: Broker, rel_pg: str,
                                       rel_workers: Workers):
    """SIGKILL beat between ticks and start another: runs ingested meanwhile are scored,
    every run exactly once."""
    env = worker_env(rel_broker.url, rel_pg, ingest_settle_s=0)
    tag = f"beat-kill-{uuid.uuid4().hex[:6]}"
    with EnvPatch(**env):
        rel_workers.start(env, name=f"beat-w-{rel_broker.kind}", concurrency=4)
        add_evaluator(tag, scorers=[{"type": "contains", "value": "ok"}], every="1s",
                      batch_size=500)
        evaluator = {"id": _evaluator_id(tag)}
        first = _beat(env, tmp_path / "beat-1")
        try:
            record_runs(_runs(30, f"{tag}-a"), source=tag)
            wait_until(lambda: len(_scores_per_run(evaluator["id"])) == 30, RECOVERY_S,
                       "the first runs scored")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            record_runs(_runs(30, f"{tag}-b"), source=tag)
            time.sleep(2)
            second = _beat(env, tmp_path / "beat-2")
            try:
                wait_until(lambda: len(_scores_per_run(evaluator["id"])) == 60, RECOVERY_S,
                           "the runs ingested while beat was dead scored")
                time.sleep(6)  # more ticks: nothing is scored twice
            finally:
                second.terminate()
                second.wait(20)
        finally:
            if first.poll() is None:
                first.kill()
        per_run = _scores_per_run(evaluator["id"])
        assert len(per_run) == 60 and set(per_run.values()) == {1}, per_run


class BlackHole:
    """A TCP server that accepts connections and never answers: a producer sending to it
    hangs after it stored its leases, like one killed mid-enqueue."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.mark.slow
def test_evalq_run_killed_during_enqueue(tmp_path: Path, fake: FakeLLM, rel_redis, rel_pg: str,
                                         rel_workers: Workers):
    """`evalq run` is SIGKILLed after storing its tasks' leases and before publishing
    them (its broker never answers): the workers' sweeper publishes them and the
    experiment completes with nothing run twice."""
    import os

    fake.reset()
    env = worker_env(rel_redis.url, rel_pg)
    hole = BlackHole()
    dataset, _ = write_dataset(tmp_path, 200)
    with EnvPatch(**env):
        rel_workers.start(env, name="enqueue-kill", concurrency=4)
        before = _one("SELECT coalesce(max(id), 0) FROM experiment")
        run = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli.main", "run", str(dataset), "--model",
             "openai/fake", "--api-base", fake.base_url, "--no-wait",
             *(a for s in SCORERS for a in ("--scorer", s))],
            cwd=REPO, env={**os.environ, **env,
                           "EVALQ_BROKER_URL": f"redis://127.0.0.1:{hole.port}/0"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _one("SELECT count(*) FROM task_lease l JOIN experiment e "
                                    "ON e.id = l.experiment_id WHERE e.id > :b", b=before),
                       120, "the producer's leases stored")
            time.sleep(0.5)
            assert run.poll() is None, run.communicate()[0]
            run.send_signal(signal.SIGKILL)
            run.wait(10)
            killed_at = time.monotonic()
        finally:
            hole.close()
        exp = _one("SELECT max(id) FROM experiment")
        assert exp > before
        assert stored_results(exp) == 0
        assert _one("SELECT count(*) FROM task_lease WHERE experiment_id = :e "
                    "AND sent_at IS NOT NULL", e=exp) == 0, "a message was published"
        wait_for_experiment(exp, timeout=RECOVERY_S)
        report_recovery("evalq run SIGKILLed mid-enqueue", "redis",
                        time.monotonic() - killed_at)
        assert_exact(exp, 200)
        assert fake.stats()["total"] == 200


@pytest.mark.slow
def test_same_task_delivered_twice_at_once(tmp_path: Path, fake: FakeLLM, rel_broker: Broker,
                                           rel_pg: str, rel_workers: Workers):
    """A second copy of a running task (a duplicate delivery) does nothing while the first
    runs: every model call happens once."""
    fake.reset()
    fake.configure(latency_ms=3000)
    env = worker_env(rel_broker.url, rel_pg)
    with EnvPatch(**env):
        workers = [rel_workers.start(env, name=f"dup-{i}-{rel_broker.kind}", concurrency=2)
                   for i in range(2)]
        dataset, _ = write_dataset(tmp_path, 16)  # one chunk
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                  api_base=fake.base_url, scorers=SCORERS)
        wait_until(lambda: fake.stats()["in_flight"] >= 16, 60, "the chunk's calls in flight")
        with session_scope() as s:
            lease_id, args, kwargs = s.execute(sa.text(
                "SELECT id, task_args, task_kwargs FROM task_lease WHERE experiment_id = :e"),
                {"e": exp}).one()
        from workers.delivery.dispatch import publish

        publish([lease_id], "evalq.run_items", [args], [kwargs])  # the same message again
        wait_for_experiment(exp, timeout=RECOVERY_S)
        assert_exact(exp, 16)
        assert fake.stats()["total"] == 16
        logs = "".join(w.output() for w in workers)
        assert "held by a live worker; this copy does nothing" in logs


@pytest.mark.slow
def test_broker_restarted_mid_run(tmp_path: Path, fake: FakeLLM, rel_broker: Broker,
                                  rel_pg: str, rel_workers: Workers):
    """The broker goes away for 5 s mid-run (Redis without persistence loses every
    message): the worker reconnects, what was lost is sent again, the run completes
    within RECOVERY_S of the broker's return, nothing doubled, no `evalq resume`."""
    fake.reset()
    fake.configure(latency_ms=200)
    env = worker_env(rel_broker.url, rel_pg)
    n = 400
    with EnvPatch(**env):
        worker = rel_workers.start(env, name=f"restart-{rel_broker.kind}", concurrency=2)
        dataset, _ = write_dataset(tmp_path, n)
        exp = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake.base_url,
                                  scorers=SCORERS)
        wait_until(lambda: stored_results(exp) >= n // 4, 240, "a quarter stored")
        rel_broker.stop()
        stopped_with = stored_results(exp)
        time.sleep(5)
        rel_broker.start()
        back_at = time.monotonic()
        assert stopped_with < n, "the run finished before the broker stopped"
        wait_for_experiment(exp, timeout=RECOVERY_S)
        report_recovery("broker restarted mid-run (from its return)", rel_broker.kind,
                        time.monotonic() - back_at, stored=stopped_with)
        assert_exact(exp, n)
        assert worker.process.poll() is None
