"""Liveness you can see: `evalq workers`, the queue and worker lines of `evalq status`,
and the warning of a distributed `evalq run` that no worker consumes its queue. Real
Redis, real PostgreSQL, real worker subprocesses, the CLI through its runner or as a
subprocess (to time what it prints)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.leases import WorkerBeat
from scheduler import WaitTimeout, enqueue_offline_run, wait_for_experiment
from scheduler.cli.main import app
from scheduler.liveness import no_worker_warning
from tests.factories import write_jsonl
from tests.support import REPO, EnvPatch, RedisServer, WorkerProcess, redis_flush

runner = CliRunner()
QUEUES = ["evalq.control", "evalq.offline", "evalq.online"]
WARNING = "no evalq worker is consuming evalq.offline"


@pytest.fixture(scope="module")
def live_env(redis_server: RedisServer, pg_url: str) -> Iterator[dict[str, str]]:
    """Distributed settings on a PostgreSQL database and a Redis database of this module's
    own: the experiments left waiting here without a worker must not reach the workers of
    other modules (their sweepers would send the queued leases again)."""
    from models.migrate import upgrade

    name = f"evalq_live_{uuid.uuid4().hex[:10]}"
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    broker = redis_server.url.rsplit("/", 1)[0] + "/7"
    redis_flush(broker)
    env = {"EVALQ_BROKER_URL": broker,
           "EVALQ_DATABASE_URL": f"{pg_url.rsplit('/', 1)[0]}/{name}",
           "EVALQ_POLL_INTERVAL_S": "0.1", "EVALQ_RETRY_INITIAL_S": "0.01",
           "EVALQ_RETRY_MAX_S": "0.2"}
    with EnvPatch(**env):
        upgrade()
    yield env
    redis_flush(broker)
    from models.db import dispose_engines

    dispose_engines()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def live(live_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`live_env` applied to this process (settings and engines reloaded)."""
    with EnvPatch(**live_env):
        yield live_env


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _workers() -> dict[str, Any]:
    code, out, err = _cli("workers", "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def _mine(workers: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [w for w in workers if w["name"].startswith(f"{name}-{os.getpid()}@")]


def _dataset(tmp_path: Path, n: int) -> Path:
    tag = uuid.uuid4().hex[:6]
    return write_jsonl(tmp_path / f"live-{tag}.jsonl",
                       [{"id": f"{tag}-{i}", "input": f"{tag} {i}", "expected": f"{tag} {i}"}
                        for i in range(n)])


class TimedCli:
    """`python -m scheduler.cli.main ARGS` as a subprocess; each stderr line with the time it
    arrived, counted from the start."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli.main", *args], cwd=REPO,
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.lines: list[tuple[float, str]] = []
        self.out: list[str] = []
        self.ended: float | None = None
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.out.append(self.process.stdout.read())

    def wait(self, timeout: float) -> tuple[int, str]:
        """The exit code and stdout, once the process ended (killed after `timeout`)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.ended = time.monotonic() - self.started
        for reader in self._readers:
            reader.join(10)
        return self.process.returncode, "".join(self.out)

    def first(self, text: str) -> float | None:
        """When the first stderr line containing `text` arrived."""
        return next((t for t, line in self.lines if text in line), None)

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


def test_workers_lists_a_live_worker_then_not_after_sigterm(live: dict[str, str]):
    worker = WorkerProcess.start(live, name="lv-list", concurrency=3)
    try:
        data = _workers()
        assert data["mode"] == "distributed" and data["dead_after_s"] == 15.0
        [row] = _mine(data["live"], "lv-list")
        assert row["queues"] == QUEUES
        assert row["concurrency"] == 3
        assert row["pid"] == worker.process.pid
        assert row["state"] == "live" and row["stopped_at"] is None
        assert row["seen_s_ago"] < 15
        assert row["held"] == 0 and row["experiments"] == []
        assert set(row) >= {"name", "hostname", "pid", "queues", "concurrency", "started_at",
                            "seen_at", "held", "experiments"}
        assert not _mine(data["gone"], "lv-list")

        code, out, _ = _cli("workers")
        assert code == 0
        assert row["name"] in out and "concurrency 3" in out and "last seen" in out
        assert ",".join(QUEUES) in out
    finally:
        assert worker.stop() == 0
    data = _workers()  # a clean stop says so at once: no waiting for the heartbeat to age
    assert not _mine(data["live"], "lv-list")
    [gone] = _mine(data["gone"], "lv-list")
    assert gone["state"] == "stopped" and gone["stopped_at"] is not None
    code, out, _ = _cli("workers")
    assert code == 0 and f"{gone['name']}" in out and "stopped" in out


def test_status_shows_queue_depths_leases_and_the_workers_holding_the_work(
        live: dict[str, str], fake_llm: FakeLLM, tmp_path: Path):
    worker = WorkerProcess.start(live, name="lv-status", concurrency=2)
    try:
        fake_llm.configure(latency_ms=2500)
        exp_id = enqueue_offline_run(dataset=_dataset(tmp_path, 4), model="openai/fake",
                                     api_base=fake_llm.base_url)
        deadline = time.monotonic() + 30
        while True:
            code, out, err = _cli("status", str(exp_id), "--json")
            assert code == 0, err
            state = json.loads(out)
            if state["leases"]["running"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # the keys `evalq status --json` always had, then the new ones
        assert {"experiment_id", "status", "total", "done", "failed", "pending",
                "error"} <= set(state)
        assert state["mode"] == "distributed"
        assert set(state["queues"]) == set(QUEUES)
        assert all(isinstance(n, int) for n in state["queues"].values())
        assert state["leases"]["running"] >= 1
        assert state["workers"]["live"] >= 1
        [name] = [w["name"] for w in _mine(_workers()["live"], "lv-status")]
        assert name in state["workers"]["consuming"]
        assert [h["name"] for h in state["workers"]["holding"]] == [name]
        assert state["warning"] is None

        code, out, _ = _cli("status", str(exp_id))
        assert code == 0
        assert "waiting in the broker: evalq.offline" in out
        assert "running" in out and name in out

        wait_for_experiment(exp_id, timeout=60)
        code, out, _ = _cli("status", str(exp_id), "--json")
        state = json.loads(out)
        assert state["status"] == "completed"
        assert state["leases"] == {"queued": 0, "running": 0}
        assert state["queues"]["evalq.offline"] == 0
        assert state["workers"]["holding"] == [] and state["warning"] is None
    finally:
        worker.stop()


def test_status_says_unknown_when_the_broker_does_not_answer(live: dict[str, str]):
    from tests.support import free_port

    with EnvPatch(EVALQ_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"):
        code, out, err = _cli("status", "1", "--json")
        assert code == 0, err
        state = json.loads(out)
        assert state["queues"] == dict.fromkeys(QUEUES)
        code, out, _ = _cli("status", "1")
        assert code == 0 and "evalq.offline unknown" in out


def test_distributed_run_without_a_worker_warns_within_10s_and_keeps_waiting(
        live: dict[str, str], fake_llm: FakeLLM, tmp_path: Path):
    assert not _workers()["live"], "a worker of an earlier test is still alive"
    dataset = _dataset(tmp_path, 5)
    run = TimedCli(live, "run", str(dataset), "--model", "openai/fake", "--api-base",
                   fake_llm.base_url, "--timeout", "12")
    code, _ = run.wait(timeout=60)
    waiting = run.first(" started")
    warned = run.first(WARNING)
    assert waiting is not None and warned is not None, run.stderr()
    assert warned - waiting < 10, run.stderr()  # from the start of waiting
    assert warned < 15, run.stderr()  # from the start of the process
    assert run.stderr().count(WARNING) == 1
    line = next(line for _, line in run.lines if WARNING in line)
    assert "none has sent a heartbeat in the last 15 s" in line
    assert "celery -A workers worker" in line and "Distributed mode" in line
    assert "5 items" in line
    # it went on waiting until --timeout, then said so (the run goes on)
    assert code == 1 and run.first("is still running after 12") is not None, run.stderr()
    found = re.search(r"experiment (\d+) started", run.stderr())
    assert found is not None
    exp_id = int(found.group(1))

    code, out, _ = _cli("status", str(exp_id), "--json")
    state = json.loads(out)
    assert state["queues"]["evalq.offline"] >= 1
    assert state["leases"]["queued"] >= 1 and state["workers"]["live"] == 0
    assert state["warning"] is not None and WARNING in state["warning"]

    # the Python API gets the same message through its callback
    messages: list[str] = []
    with pytest.raises(WaitTimeout):
        wait_for_experiment(exp_id, timeout=7, on_no_worker=messages.append)
    assert len(messages) == 1 and WARNING in messages[0]


def test_distributed_run_with_a_worker_prints_no_warning(live: dict[str, str],
                                                         fake_llm: FakeLLM, tmp_path: Path):
    worker = WorkerProcess.start(live, name="lv-run", concurrency=4)
    try:
        fake_llm.configure(latency_ms=6500)  # the wait outlasts the warning's grace period
        run = TimedCli(live, "run", str(_dataset(tmp_path, 3)), "--model", "openai/fake",
                       "--api-base", fake_llm.base_url, "--timeout", "60")
        code, out = run.wait(timeout=90)
        assert code == 0, run.stderr()
        began = run.first(" started")
        assert began is not None and run.ended is not None
        assert run.ended - began > 6, run.stderr()  # it waited past the first checks
        assert WARNING not in run.stderr()
    finally:
        worker.stop()


def test_workers_in_embedded_mode_and_on_an_unmigrated_database(embedded_env,
                                                                tmp_path: Path):
    code, out, err = _cli("workers")
    assert code == 0, err
    assert "no workers in embedded mode" in out
    code, out, _ = _cli("workers", "--json")
    assert code == 0
    assert json.loads(out)["mode"] == "embedded" and json.loads(out)["live"] == []

    empty = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    with EnvPatch(EVALQ_DATABASE_URL=empty, EVALQ_BROKER_URL="redis://127.0.0.1:1/0"):
        for args in (["workers"], ["workers", "--json"], ["status", "1"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 1, args
            assert "evalq db upgrade" in result.stderr, args
            assert "Traceback" not in result.stderr + result.stdout
            assert result.exception is None or isinstance(result.exception, SystemExit)


def _beat(name: str, queues: str) -> WorkerBeat:
    now = datetime.now(UTC)
    return WorkerBeat(name=name, hostname="h", pid=1, queues=queues, concurrency=1,
                      started_at=now, seen_at=now)


def test_warning_text_names_what_the_live_workers_consume():
    assert no_worker_warning(queue="evalq.offline", dead_after_s=15,
                             live=[_beat("a", "evalq.offline,evalq.online")]) is None
    text = no_worker_warning(queue="evalq.offline", dead_after_s=15,
                             live=[_beat("a", "evalq.online"), _beat("b", "evalq.control")],
                             experiment_id=7, items=200, tasks=13)
    assert text is not None
    assert text.startswith("no evalq worker is consuming evalq.offline (2 live workers, "
                           "consuming evalq.control, evalq.online only)")
    assert text.endswith("experiment 7's 200 items (13 tasks queued) wait for a worker")
    text = no_worker_warning(queue="evalq.offline", dead_after_s=15, live=[])
    assert text is not None and "none has sent a heartbeat in the last 15 s" in text
