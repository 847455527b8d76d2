"""Re-runs and the response cache with real workers: rerun --failed, resume after a crash
of everything, rescore without calling the target, and zero model calls on a cached run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.tables import Result, Score
from scheduler import enqueue_offline_run, wait_for_experiment
from scheduler.cli.main import app
from scheduler.experiments.wait import progress
from tests.factories import counts, write_jsonl
from tests.support import EnvPatch, WorkerProcess, redis_flush, truncate_all

runner = CliRunner()
ROWS = [{"id": f"q{i}", "input": f"question {i}", "expected": f"question {i}"}
        for i in range(10)]


@pytest.fixture(scope="module")
def env(redis_url: str, pg_url: str) -> Iterator[dict[str, str]]:
    from models.migrate import upgrade

    values = {"EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": pg_url,
              "EVALQ_POLL_INTERVAL_S": "0.1", "EVALQ_RETRY_INITIAL_S": "0.01"}
    with EnvPatch(**values):
        upgrade()
        truncate_all(pg_url)
        yield values


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    w = WorkerProcess.start(env, name="reruns")
    yield w
    w.stop()


def _cli(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_rerun_failed_runs_only_errored_items(worker: WorkerProcess, fake_llm: FakeLLM,
                                              tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    fake_llm.script([{"match": "question 3", "status": 400},
                     {"match": "question 7", "status": 401}])
    fake_llm.configure(answers={"question 5": "wrong answer"})  # scores low, not an error
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                 api_base=fake_llm.base_url)
    first = wait_for_experiment(exp_id, timeout=60)
    assert first["counts"] == counts(10, done=8, failed=2)
    calls = fake_llm.stats()["total"]
    out = _cli("rerun", str(exp_id), "--failed")
    assert out["enqueued"] == 2
    assert out["report"]["counts"] == counts(10, done=10, failed=0)
    assert out["report"]["status"] == "completed"
    assert fake_llm.stats()["total"] == calls + 2  # only the two failed items were called
    assert out["report"]["scorers"]["exact_match"]["mean"] == pytest.approx(0.9)
    with session_scope() as s:
        n = s.exec(select(func.count()).select_from(Result)
                   .where(Result.experiment_id == exp_id)).one()
    assert n == 10


def test_resume_after_everything_crashed(env: dict[str, str], worker: WorkerProcess,
                                         fake_llm: FakeLLM, tmp_path: Path):
    worker.stop()  # nobody consumes: the run is enqueued, then the broker loses it all
    try:
        exp_id = enqueue_offline_run(dataset=write_jsonl(tmp_path / "d.jsonl", ROWS),
                                     model="openai/fake", api_base=fake_llm.base_url)
        redis_flush(env["EVALQ_BROKER_URL"])
        assert progress(exp_id)["pending"] == 10
    finally:
        restarted = WorkerProcess.start(env, name="reruns-2")
    try:
        out = _cli("resume", str(exp_id))
        assert out["enqueued"] == 10
        assert out["report"]["counts"]["done"] == 10
        assert _cli("resume", str(exp_id))["enqueued"] == 0  # nothing left to do
    finally:
        restarted.stop()


def test_rescore_adds_scorers_without_calling_the_target(env: dict[str, str],
                                                         fake_llm: FakeLLM, tmp_path: Path):
    w = WorkerProcess.start(env, name="rescore")
    try:
        exp_id = enqueue_offline_run(dataset=write_jsonl(tmp_path / "d.jsonl", ROWS),
                                     model="openai/fake", api_base=fake_llm.base_url)
        wait_for_experiment(exp_id, timeout=60)
        calls = fake_llm.stats()["total"]
        out = _cli("rescore", str(exp_id), "--scorer", '{"type": "contains", "value": "1"}',
                   "--scorer", "exact_match", "--scorer", '{"type": "exact_match", '
                   '"ignore_case": false}')
        # exact_match as the run has it is not added again; with other parameters it is
        assert out["added"] == ["contains", "exact_match#2"]
        assert out["already_present"] == ["exact_match"]
        assert fake_llm.stats()["total"] == calls
        scorers = out["report"]["scorers"]
        assert scorers["contains"]["n_scored"] == 10
        assert scorers["contains"]["mean"] == pytest.approx(0.1)  # only "question 1"
        assert scorers["exact_match#2"]["mean"] == scorers["exact_match"]["mean"] == 1.0
        with session_scope() as s:
            n = s.exec(select(func.count()).select_from(Score)
                       .where(Score.experiment_id == exp_id)).one()
        assert n == 30
        bad = runner.invoke(app, ["rescore", str(exp_id), "--scorer", "nope"])
        assert bad.exit_code == 2 and "unknown scorer" in bad.stderr
    finally:
        w.stop()


def test_cache_makes_a_rerun_free_in_redis(env: dict[str, str], fake_llm: FakeLLM,
                                           tmp_path: Path):
    w = WorkerProcess.start(env, name="cache")
    try:
        dataset = write_jsonl(tmp_path / "cache.jsonl", ROWS)
        args = ["run", str(dataset), "--model", "openai/fake", "--api-base",
                fake_llm.base_url, "--param", "temperature=0", "--repeats", "2"]
        first = _cli(*args)
        assert fake_llm.stats()["total"] == 20  # the repeat index is part of the key
        assert first["report"]["cache"]["hits"] == 0
        second = _cli(*args)
        assert fake_llm.stats()["total"] == 20  # zero model calls
        assert second["report"]["cache"]["hits"] == 20
        assert second["scores"] == first["scores"]
        third = _cli(*args, "--no-cache")
        assert fake_llm.stats()["total"] == 40 and third["report"]["cache"]["hits"] == 0
        # not temperature 0: no cache unless asked for
        _cli("run", str(dataset), "--model", "openai/fake", "--api-base", fake_llm.base_url)
        assert fake_llm.stats()["total"] == 50
    finally:
        w.stop()
