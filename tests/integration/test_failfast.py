"""Fail fast end to end: an experiment whose first items all fail the same permanent way
(a refused or missing key) stops after a few model calls, in embedded and distributed
mode, and `evalq run` says why with exit code 1; a few failed items among passing ones
never stop a run, and --max-failures decides its exit code."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.settings import get_settings
from scheduler.cli.main import app
from scheduler.experiments.embedded import running_here
from tests.factories import write_jsonl
from tests.support import EnvPatch, WorkerProcess

runner = CliRunner()


def _dataset(tmp_path: Path, n: int) -> tuple[Path, str]:
    tag = uuid.uuid4().hex[:6]
    # "." ends every input, so that scripting "item 1." never matches "item 10.".
    rows = [{"id": f"{tag}-{i}", "input": f"{tag} item {i}.", "expected": f"{tag} item {i}."}
            for i in range(n)]
    return write_jsonl(tmp_path / f"ff-{tag}.jsonl", rows), tag


def _run(dataset: Path, fake: FakeLLM, *extra: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake", "--api-base",
                                 fake.base_url, "--json", *extra])
    assert result.stdout.strip(), result.stderr
    return result.exit_code, json.loads(result.stdout), result.stderr


def _attempts(experiment_id: int) -> list[int]:
    with session_scope() as s:
        return list(s.execute(sa.text("SELECT attempts FROM result WHERE experiment_id = :e"),
                              {"e": experiment_id}).scalars())


def _settle(fake: FakeLLM, quiet_s: float = 1.0, timeout: float = 60) -> int:
    """The fake server's request count once nothing has arrived for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        stats = fake.stats()
        if stats["total"] != last or stats["in_flight"]:
            last, since = stats["total"], time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last
        time.sleep(0.1)
    raise AssertionError(f"the fake server still receives requests after {timeout} s")


def test_refused_key_stops_an_embedded_run_after_a_few_calls(embedded_env,
                                                             fake_llm: FakeLLM,
                                                             tmp_path: Path):
    dataset, _ = _dataset(tmp_path, 200)
    fake_llm.configure(fault_rates={"401": 1.0})
    started = time.monotonic()
    code, summary, err = _run(dataset, fake_llm)
    elapsed = time.monotonic() - started
    exp_id = summary["experiment_id"]
    local = running_here(exp_id)
    assert local is not None
    local.result(timeout=60)  # the chunks that were not started return at once

    assert code == 1, err
    assert summary["status"] == "failed"
    assert "AuthenticationError" in summary["report"]["error"]
    assert "Incorrect API key provided" in summary["report"]["error"]
    assert f"experiment {exp_id} failed" in err and "Incorrect API key provided" in err
    assert "next: the provider refused the API key" in err
    # Embedded mode runs 2 x EVALQ_CONCURRENCY // 16 chunks of 16 at once (50 by default:
    # 6 chunks): the first one stored stops the rest. Every call was made once: nothing was
    # retried.
    total = fake_llm.stats()["total"]
    attempts = _attempts(exp_id)
    assert 10 <= total <= 16 * (2 * get_settings().concurrency // 16), total
    assert attempts == [1] * total
    assert fake_llm.stats()["by_status"] == {"401": total}
    # The report was read when the stop was seen; the other chunk in flight landed since.
    state = json.loads(runner.invoke(app, ["status", str(exp_id), "--json"]).stdout)
    assert (state["status"], state["failed"], state["pending"]) == ("failed", total,
                                                                    200 - total)
    print(f"\nembedded: stopped after {total} of 200 calls in {elapsed:.2f} s")

    result = runner.invoke(app, ["status", str(exp_id)])
    assert "failed" in result.stdout and "Incorrect API key provided" in result.stdout
    result = runner.invoke(app, ["report", str(exp_id)])
    assert "experiment error" in result.stdout and "AuthenticationError" in result.stdout


def test_missing_key_stops_a_run_without_any_request(embedded_env, fake_llm: FakeLLM,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    dataset, _ = _dataset(tmp_path, 200)
    code, summary, err = _run(dataset, fake_llm)
    running_here(summary["experiment_id"]).result(timeout=60)  # type: ignore[union-attr]
    assert code == 1, err
    assert summary["status"] == "failed"
    # At most the chunks running at once (2 x EVALQ_CONCURRENCY // 16 chunks of 16).
    in_flight = 16 * (2 * get_settings().concurrency // 16)
    assert summary["counts"]["failed"] <= in_flight and summary["counts"]["done"] == 0
    assert set(_attempts(summary["experiment_id"])) == {1}
    assert "Missing credentials" in err
    assert "next: set OPENAI_API_KEY in the environment" in err
    assert fake_llm.stats()["total"] == 0


def test_a_few_bad_requests_among_passing_items_do_not_stop_the_run(embedded_env,
                                                                    fake_llm: FakeLLM,
                                                                    tmp_path: Path):
    dataset, tag = _dataset(tmp_path, 40)
    bad = [{"match": f"{tag} item {i}.", "status": 400, "message": "bad input"}
           for i in range(3)]  # the very first items
    fake_llm.script(bad)
    code, summary, err = _run(dataset, fake_llm)
    assert code == 1, err
    assert summary["status"] == "completed"
    assert (summary["counts"]["done"], summary["counts"]["failed"]) == (37, 3)
    assert "3 of 40 items" in err and "more than --max-failures 0" in err
    assert "bad input" in err
    assert fake_llm.stats()["total"] == 40

    fake_llm.script(bad)
    code, summary, err = _run(dataset, fake_llm, "--max-failures", "3")
    assert code == 0, err
    assert summary["counts"]["failed"] == 3 and err.count("error:") == 0

    fake_llm.script(bad)
    code, _, err = _run(dataset, fake_llm, "--max-failures", "2")
    assert code == 1 and "more than --max-failures 2" in err


def test_gate_and_usage_exit_codes_are_kept(embedded_env, fake_llm: FakeLLM,
                                            tmp_path: Path):
    dataset, _ = _dataset(tmp_path, 5)
    code, _, err = _run(dataset, fake_llm, "--fail-under", "exact_match=1")
    assert code == 0, err
    calls = fake_llm.stats()["total"]
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake", "--api-base",
                                 fake_llm.base_url, "--scorer", "contains",
                                 "--fail-under", "exact_match=0.5"])  # not a scorer of the run
    assert result.exit_code == 2 and "its scorers: contains" in result.stderr  # refused
    assert fake_llm.stats()["total"] == calls  # before it ran
    result = runner.invoke(app, ["run", str(dataset), "--max-failures", "-1"])
    assert result.exit_code == 2


def test_refused_key_stops_a_distributed_run(distributed: WorkerProcess, fake_llm: FakeLLM,
                                             tmp_path: Path):
    n = 400
    dataset, _ = _dataset(tmp_path, n)
    fake_llm.configure(fault_rates={"401": 1.0})
    # Small chunks, so the chunks a worker has started before the stop are few calls.
    with EnvPatch(EVALQ_CHUNK_SIZE="4"):
        started = time.monotonic()
        code, summary, err = _run(dataset, fake_llm)
        elapsed = time.monotonic() - started
    assert code == 1, err
    assert summary["status"] == "failed" and summary["report"]["mode"] == "distributed"
    assert "Incorrect API key provided" in err and "every worker" in err
    total = _settle(fake_llm)  # the worker drains the stopped chunks without calling
    attempts = _attempts(summary["experiment_id"])
    assert 10 <= total <= n // 4, total
    assert attempts == [1] * total, "a permanent error was retried"
    print(f"\ndistributed: stopped after {total} of {n} calls in {elapsed:.2f} s")
    # The worker, not this process, ran them: Celery logs each task it finished (the task
    # list it prints at start-up does not match this).
    distributed.wait_for("] succeeded in", 10)
    assert re.search(r"Task evalq\.run_items\[[^\]]+\] succeeded in", distributed.output())
