"""Distributed mode: real Redis broker, real PostgreSQL, a real Celery worker subprocess,
real HTTP to the fake model server. `evalq run` enqueues and waits on the database."""

from __future__ import annotations

import ast
import json
import re
import time
import uuid
from pathlib import Path

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.tables import Experiment, Result, Score
from scheduler import enqueue_offline_run, wait_for_experiment
from scheduler.cli.main import app
from tests.factories import counts, write_jsonl
from tests.support import WorkerProcess

runner = CliRunner()


def _rows(n: int, tag: str) -> list[dict]:
    return [{"id": f"{tag}-{i}", "input": f"{tag} item {i}", "expected": f"{tag} item {i}"
             if i % 3 else "something else"} for i in range(n)]


def _dataset(tmp_path: Path, n: int = 9) -> Path:
    tag = uuid.uuid4().hex[:6]
    return write_jsonl(tmp_path / f"ds-{tag}.jsonl", _rows(n, tag))


def _keys_and_scores(exp_id: int) -> tuple[int, int, int]:
    with session_scope() as s:
        results = s.exec(select(func.count()).select_from(Result)
                         .where(Result.experiment_id == exp_id)).one()
        distinct = s.exec(select(func.count()).select_from(
            select(Result.item_id, Result.repeat).where(Result.experiment_id == exp_id)
            .distinct().subquery())).one()
        scores = s.exec(select(func.count()).select_from(Score)
                        .where(Score.experiment_id == exp_id)).one()
    return results, distinct, scores


SUCCEEDED = re.compile(r"Task evalq\.run_items?\[([^\]]+)\] succeeded in [\d.]+s: (.*)")


def _worker_stored(worker: WorkerProcess, log_from: int = 0) -> tuple[int, int]:
    """(evalq.run_item(s) tasks that succeeded in the worker since `log_from`, Results
    they stored), from the lines Celery logs when a task returns: the task list a worker
    prints at start-up matches neither."""
    done = SUCCEEDED.findall(worker.output()[log_from:])
    stored = 0
    for _, returned in done:
        counts = ast.literal_eval(returned)
        if isinstance(counts, dict):  # a chunk: counts by status
            stored += sum(n for status, n in counts.items() if status in ("ok", "error"))
        elif counts in ("ok", "error"):  # one item: its status
            stored += 1
    return len({task_id for task_id, _ in done}), stored


def test_cli_run_enqueues_and_worker_does_the_work(distributed: WorkerProcess,
                                                   fake_llm: FakeLLM, tmp_path: Path):
    dataset = _dataset(tmp_path, 9)
    log_from = len(distributed.output())
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake", "--api-base",
                                 fake_llm.base_url, "--scorer", "exact_match", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    assert summary["report"]["mode"] == "distributed"
    assert summary["counts"] == counts(9, done=9, failed=0)
    assert summary["scores"]["exact_match"] == pytest.approx(6 / 9)
    assert fake_llm.stats()["total"] == 9
    assert _keys_and_scores(summary["experiment_id"]) == (9, 9, 9)
    # The worker subprocess (not this process) stored them: its log of returned tasks
    # accounts for every Result.
    tasks, stored = _worker_stored(distributed, log_from)
    assert tasks >= 1 and stored == 9, distributed.output()[log_from:][-3000:]


def test_no_wait_returns_while_workers_run(distributed: WorkerProcess, fake_llm: FakeLLM,
                                           tmp_path: Path):
    fake_llm.configure(latency_ms=300)
    dataset = _dataset(tmp_path, 16)
    started = time.monotonic()
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake", "--api-base",
                                 fake_llm.base_url, "--no-wait", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "running"
    assert time.monotonic() - started < 16 * 0.3 / 8 + 2  # did not wait for the work
    summary = wait_for_experiment(out["experiment_id"], timeout=60)
    assert summary["counts"]["done"] == 16


def test_duplicate_deliveries_leave_one_result_and_exact_counts(distributed: WorkerProcess,
                                                                fake_llm: FakeLLM,
                                                                tmp_path: Path):
    from workers.celery_app import producer

    fake_llm.configure(latency_ms=50)
    dataset = _dataset(tmp_path, 12)
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake_llm.base_url,
                                 scorers=["exact_match", "contains"], repeats=2)
    # Deliver every task a second time, forced, while the first copies are still running.
    from scheduler.experiments.datasets import dataset_items
    from workers.tasks import run_items

    with producer() as p:
        for item_id in sorted(dataset_items(exp_id)):
            for rep in range(2):
                run_items.apply_async(args=(exp_id, [[item_id, rep]], True), producer=p)
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["counts"] == counts(24, done=24, failed=0)
    # Wait until the forced duplicates have run too, then check nothing doubled.
    deadline = time.monotonic() + 30
    while fake_llm.stats()["total"] < 48 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fake_llm.stats()["total"] == 48
    time.sleep(0.5)
    assert _keys_and_scores(exp_id) == (24, 24, 48)
    with session_scope() as s:
        exp = s.get(Experiment, exp_id)
        assert exp is not None and (exp.n_done, exp.n_failed) == (24, 0)


def test_a_redelivered_task_is_skipped_without_calling_the_model(distributed: WorkerProcess,
                                                                 fake_llm: FakeLLM,
                                                                 tmp_path: Path):
    from scheduler.experiments.datasets import dataset_items
    from workers.celery_app import producer
    from workers.tasks import run_items

    exp_id = enqueue_offline_run(dataset=_dataset(tmp_path, 3), model="openai/fake",
                                 api_base=fake_llm.base_url)
    wait_for_experiment(exp_id, timeout=60)
    calls = fake_llm.stats()["total"]
    marker = f"skip-{uuid.uuid4().hex[:6]}"
    item_id = next(iter(dataset_items(exp_id)))
    with producer() as p:
        run_items.apply_async(args=(exp_id, [[item_id, 0]]), task_id=marker, producer=p)
    distributed.wait_for(f"Task evalq.run_items[{marker}] succeeded", 30)
    returned = dict(SUCCEEDED.findall(distributed.output()))[marker]
    assert ast.literal_eval(returned) == {"skipped": 1}  # the worker saw the stored Result
    assert fake_llm.stats()["total"] == calls
    assert _keys_and_scores(exp_id) == (3, 3, 3)


def test_retry_classification_end_to_end(distributed: WorkerProcess, fake_llm: FakeLLM,
                                         tmp_path: Path):
    tag = uuid.uuid4().hex[:6]
    dataset = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "rate", "input": f"{tag} rate limited", "expected": "x"},
        {"id": "server", "input": f"{tag} server error", "expected": "x"},
        {"id": "bad", "input": f"{tag} bad request", "expected": "x"},
        {"id": "auth", "input": f"{tag} unauthorized", "expected": "x"},
    ])
    fake_llm.script([
        {"match": "rate limited", "status": 429, "times": 2},
        {"match": "server error", "status": 500, "times": 1},
        {"match": "bad request", "status": 400},
        {"match": "unauthorized", "status": 401},
    ])
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=fake_llm.base_url)
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["counts"] == counts(4, done=2, failed=2)
    with session_scope() as s:
        rows = s.exec(select(Result).where(Result.experiment_id == exp_id)).all()
        by_input = {r.output or r.error_type: r for r in rows}
    assert by_input[f"{tag} rate limited"].attempts == 3
    assert by_input[f"{tag} server error"].attempts == 2
    assert by_input["BadRequestError"].attempts == 1
    assert by_input["AuthenticationError"].attempts == 1
    assert summary["errors"] == {"BadRequestError": 1, "AuthenticationError": 1}


def test_worker_refuses_an_unmigrated_database(redis_url: str, tmp_path: Path):
    empty = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    worker = WorkerProcess.start({"EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": empty},
                                 name="unmigrated", wait_ready=False)
    code = worker.process.wait(timeout=60)
    assert code != 0
    assert "evalq db upgrade" in worker.output()
    assert "ready." not in worker.output()
