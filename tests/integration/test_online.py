"""Online evals: ingestion, deterministic sampling, the atomic claim under concurrency
(threads and processes, SQLite and PostgreSQL), crashed claims, and a real worker + beat
on both databases."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import col, func, select
from typer.testing import CliRunner

from models.claims import is_sampled
from models.db import session_scope
from models.tables import ClaimStatus, OnlineClaim, ProductionRun, Score, utcnow
from scheduler.cli.main import app
from scheduler.evaluators import add_evaluator, tick_now
from scheduler.ingest.records import record_runs
from tests.factories import write_jsonl
from tests.support import REPO, EnvPatch, WorkerProcess, truncate_all

runner = CliRunner()


def _runs(n: int, prefix: str = "r", **extra: object) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "input": f"question {i}",
             "output": "ok answer" if i % 4 else "bad answer", "status": "COMPLETE",
             "metadata": {"env": "prod" if i % 2 else "staging"}, **extra} for i in range(n)]


def _count(model: type, *where: object) -> int:
    with session_scope() as s:
        return s.exec(select(func.count()).select_from(model).where(*where)).one()


@pytest.fixture
def settled():
    """Runs are claimable as soon as they are ingested."""
    with EnvPatch(EVALQ_INGEST_SETTLE_S="0") as env:
        yield env


def test_ingestion_is_idempotent_and_unpacks_portia_runs(db_url, settled):
    first = record_runs(_runs(5), source="app")
    again = record_runs(_runs(5), source="app")
    assert (first.inserted, first.duplicates) == (5, 0)
    assert (again.inserted, again.duplicates) == (0, 5)
    # (record_runs is the synchronous path; record_run sends in the background)
    assert record_runs([{"id": "r-0", "output": "x"}], source="other").inserted == 1
    portia = {"id": "pr-1", "plan": {"id": "plan-1", "plan_context": {"query": "Weather?"},
                                     "steps": [{"task": "look up", "tool_id": "weather",
                                                "inputs": [], "output": "$w"}]},
              "plan_run": {"state": "COMPLETE", "outputs": {
                  "step_outputs": {"$w": {"value": "12C"}},
                  "final_output": {"value": "It is 12C"}}}}
    assert record_runs([portia], source="agent").inserted == 1
    with session_scope() as s:
        row = s.exec(select(ProductionRun).where(ProductionRun.external_id == "pr-1")).one()
    assert (row.input, row.output, row.status) == ("Weather?", "It is 12C", "COMPLETE")
    assert row.tool_calls == [{"name": "weather", "arguments": []}]
    assert row.steps[0]["output"] == "12C" and row.meta == {"plan_id": "plan-1"}
    assert _count(ProductionRun) == 7


def test_cli_ingest_keeps_good_lines_and_numbers_bad_ones(embedded_env, tmp_path: Path):
    path = write_jsonl(tmp_path / "runs.jsonl", [
        {"id": "a", "output": "x"}, '{"id": "b", "output": ', {"output": "no id"},
        {"id": "c", "latency_ms": -5}, {"id": "d", "output": "y"}])
    result = runner.invoke(app, ["ingest", str(path), "--source", "svc", "--json"])
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert (summary["inserted"], summary["rejected"]) == (2, 3)
    assert [e.split(": ")[0] for e in summary["errors"]] == [f"{path}:2", f"{path}:3",
                                                              f"{path}:4"]
    assert "latency_ms" in summary["errors"][2]
    assert _count(ProductionRun, col(ProductionRun.source) == "svc") == 2


def test_sampling_is_deterministic_and_close_to_the_rate(db_url, settled):
    ids = [f"run-{i}" for i in range(10_000)]
    picked = [i for i in ids if is_sampled("ten-percent", "s", i, 0.1)]
    assert 900 <= len(picked) <= 1100  # 10,000 x 0.1 within about 3.3 sigma
    assert picked == [i for i in ids if is_sampled("ten-percent", "s", i, 0.1)]
    other = {i for i in ids if is_sampled("other-ev", "s", i, 0.1)}
    assert len(other & set(picked)) < 200  # independent across evaluators (~100 expected)
    record_runs([{"id": i, "output": "x"} for i in ids], source="s")
    add_evaluator("ten-percent", scorers=[{"type": "contains", "value": "x"}],
                  sample_rate=0.1, batch_size=20_000, backfill_since="1h")
    assert tick_now("ten-percent")["claimed"] == len(picked)
    with session_scope() as s:
        claimed = s.exec(select(ProductionRun.external_id).join(
            OnlineClaim, col(OnlineClaim.run_id) == col(ProductionRun.id))).all()
    assert sorted(claimed) == sorted(picked)
    assert tick_now("ten-percent")["claimed"] == 0  # re-running a tick changes nothing


def test_only_runs_after_creation_unless_backfill(db_url, settled):
    record_runs(_runs(10, "old"), source="s")
    add_evaluator("from-now", scorers=["json_valid"])
    add_evaluator("backfilled", scorers=["json_valid"], backfill_since="1h")
    record_runs(_runs(3, "new"), source="s")
    assert tick_now("from-now")["claimed"] == 3
    assert tick_now("backfilled")["claimed"] == 13


def test_filters_select_runs(db_url, settled):
    add_evaluator("prod-only", scorers=["json_valid"], filters=["env=prod", "source=s"])
    record_runs(_runs(10), source="s")
    record_runs(_runs(10, "x"), source="elsewhere")
    assert tick_now("prod-only")["claimed"] == 5


def test_concurrent_ticks_never_claim_a_run_twice(db_url, settled):
    record_runs(_runs(600), source="s")
    add_evaluator("racy", scorers=[{"type": "contains", "value": "ok"}], sample_rate=0.5,
                  batch_size=25, every="1s", backfill_since="1h")
    expected = sum(is_sampled("racy", "s", f"r-{i}", 0.5) for i in range(600))
    from workers.online.tick import tick

    def hammer(_: int) -> list[int]:
        got: list[int] = []
        for _ in range(40):
            tick(force=True, enqueue=got.append)
        return got

    code = ("import json; from workers.online.tick import tick; got = []\n"
            "for _ in range(40): tick(force=True, enqueue=got.append)\n"
            "print(json.dumps(got))")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        from_threads = [c for got in pool.map(hammer, range(6)) for c in got]
    from_procs = [c for p in procs for c in json.loads(p.communicate(timeout=120)[0])]
    claims = from_threads + from_procs
    assert len(claims) == len(set(claims)), "a claim was handed out twice"
    assert len(claims) == expected
    with session_scope() as s:
        runs = s.exec(select(OnlineClaim.run_id)).all()
    assert len(runs) == len(set(runs)) == expected


def test_crashed_claims_are_scored_later(db_url, settled):
    record_runs(_runs(8), source="s")
    add_evaluator("crashy", scorers=[{"type": "contains", "value": "ok"}],
                  backfill_since="1h")
    from workers.online.claimed_runs import score_claim
    from workers.online.tick import tick

    lost: list[int] = []
    tick(force=True, enqueue=lost.append)  # claimed, but the worker "dies" before scoring
    assert len(lost) == 8 and _count(Score) == 0
    assert tick(force=True, enqueue=lost.append)[0].claim_ids == []  # not yet timed out
    with session_scope() as s:  # time passes beyond the claim timeout
        s.execute(sa.update(OnlineClaim).values(claimed_at=utcnow() - timedelta(hours=1)))
    again: list[int] = []
    tick(force=True, enqueue=again.append)
    assert sorted(again) == sorted(lost)
    assert [score_claim(c) for c in again] == ["scored"] * 8
    assert score_claim(again[0]) == "skipped"  # done claims are not scored twice
    assert _count(Score) == 8
    with session_scope() as s:
        values = Counter(s.exec(select(Score.value)).all())
    assert values == {1.0: 6, 0.0: 2}


def test_cli_online_commands_in_embedded_mode(embedded_env, settled, tmp_path: Path):
    def cli(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.stderr
        return result.stdout

    cli("online", "add", "quality", "--scorer", '{"type": "contains", "value": "ok"}',
        "--sample-rate", "1", "--every", "5m", "--batch-size", "50")
    assert json.loads(cli("online", "list", "--json"))[0]["every_s"] == 300
    record_runs(_runs(12), source="s")
    assert json.loads(cli("online", "tick", "--json")) == {"claimed": 12, "scored": 12}
    cli("online", "pause", "quality")
    record_runs(_runs(4, "later"), source="s")
    assert json.loads(cli("online", "tick", "--json"))["claimed"] == 0
    cli("online", "resume", "quality")
    assert json.loads(cli("online", "tick", "--json"))["claimed"] == 4
    report = json.loads(cli("online", "report", "quality", "--json"))
    window = report["windows"][-1]["scorers"]["contains"]
    assert window["n"] == 16 and window["mean"] == pytest.approx(12 / 16)
    page = tmp_path / "online.html"
    cli("online", "report", "quality", "--html", str(page))
    assert 'class="band"' in page.read_text() or "polygon" in page.read_text()
    result = runner.invoke(app, ["online", "add", "quality", "--scorer", "json_valid"])
    assert result.exit_code == 2 and "exists already" in result.stderr
    result = runner.invoke(app, ["online", "add", "x", "--scorer", "nope"])
    assert result.exit_code == 2 and "unknown scorer" in result.stderr
    cli("online", "remove", "quality")
    assert json.loads(cli("online", "list", "--json")) == []
    assert _count(Score) == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def online_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database shared by this test and its worker subprocesses: a
    SQLite file in tmp_path, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'online.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    with EnvPatch(EVALQ_DATABASE_URL=url):
        from models.migrate import upgrade

        upgrade()
    if request.param == "postgresql":
        truncate_all(url)
    return url


SUCCEEDED = re.compile(r"Task evalq\.score_runs\[([^\]]+)\] succeeded in [\d.]+s: (\{.*\})")


def _scored_by(worker: WorkerProcess) -> tuple[int, int]:
    """(evalq.score_runs tasks that succeeded in this worker, runs they scored), from the
    lines Celery logs when a task returns: the task list printed at start-up matches
    neither."""
    done = SUCCEEDED.findall(worker.output())
    return len({task_id for task_id, _ in done}), sum(
        ast.literal_eval(counts).get("scored", 0) for _, counts in done)


@pytest.mark.slow
def test_beat_and_worker_score_new_runs_without_restart(redis_url: str, online_db: str,
                                                        tmp_path: Path):
    env = {"EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": online_db,
           "EVALQ_TICK_INTERVAL_S": "0.5", "EVALQ_INGEST_SETTLE_S": "0"}
    db = online_db.split(":", 1)[0]
    with EnvPatch(**env):
        worker = WorkerProcess.start(env, name=f"online-{db}")
        beats = [subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "beat", "--loglevel", "INFO",
             "--schedule", str(tmp_path / f"beat-{i}")], cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        try:
            add_evaluator("live", scorers=[{"type": "contains", "value": "ok"}],
                          every="1s", batch_size=500)
            record_runs(_runs(40, "live"), source="beat")
            _wait_scores(40, worker)
            record_runs(_runs(20, "more"), source="beat")  # no restart needed
            _wait_scores(60, worker)
            time.sleep(2.0)  # more ticks from both beats: nothing is scored twice
            with session_scope() as s:
                per_run = Counter(s.exec(select(Score.subject_id)).all())
                claims = s.exec(select(OnlineClaim)).all()
            assert len(per_run) == 60 and set(per_run.values()) == {1}
            assert len(claims) == 60
            assert all(c.status == ClaimStatus.DONE and c.done_at is not None
                       and c.done_at.tzinfo is not None for c in claims)
            # The worker subprocess, not this process, scored them: in chunk tasks (two
            # ingestions, so at least two), every run once.
            tasks, scored = _scored_by(worker)
            assert tasks >= 2 and scored == 60, worker.output()[-3000:]
            raised = re.findall(r"Task (evalq\.\w+)\[[^\]]+\] raised unexpected: (.*)",
                                worker.output())
            assert raised == [], raised[:5]  # e.g. a tick comparing naive and aware times
        finally:
            for beat in beats:
                beat.terminate()
                beat.wait(20)
            worker.stop()


def _wait_scores(n: int, worker: WorkerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(Score) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {_count(Score)} of {n} runs scored after {timeout}s; worker "
                         f"log:\n{worker.output()[-3000:]}")
