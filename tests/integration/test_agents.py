"""Agent evals end to end through a real worker: a Steel-Thread-style dataset with every
assertion type (outcome, final_output exact/partial/llm_judge, tool_calls, latency,
llm_as_judge, custom) against a Python callable target, and a model target offered tool
schemas whose tool calls are recorded and checked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.tables import Result, Score
from scheduler import enqueue_offline_run, wait_for_experiment
from tests.factories import counts, write_jsonl
from tests.support import EnvPatch, WorkerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def agent_worker(redis_url: str, pg_url: str, fake_llm_server: FakeLLM
                 ) -> Iterator[WorkerProcess]:
    from models.migrate import upgrade

    env = {"EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": pg_url,
           "EVALQ_POLL_INTERVAL_S": "0.1", "EVALQ_RETRY_INITIAL_S": "0.01",
           "EVALQ_JUDGE_MODEL": "openai/gpt-4o-mini",  # priced by litellm: judge cost > 0
           "EVALQ_JUDGE_API_BASE": fake_llm_server.base_url}
    with EnvPatch(**env):
        upgrade()
        worker = WorkerProcess.start(env, name="agents")
        try:
            yield worker
        finally:
            worker.stop()


def _scores(exp_id: int) -> dict[tuple[str, str], Score]:
    with session_scope() as s:
        results = {r.id: r for r in s.exec(select(Result).where(Result.experiment_id == exp_id))}
        from models.tables import DatasetItem

        keys = {i.id: i.key for i in s.exec(select(DatasetItem))}
        return {(keys[results[sc.subject_id].item_id], sc.scorer): sc
                for sc in s.exec(select(Score).where(Score.experiment_id == exp_id))}


def test_shipped_steel_thread_dataset_runs_unchanged(agent_worker: WorkerProcess):
    exp_id = enqueue_offline_run(dataset="steel_thread", target="tests.agents:weather_agent",
                                 scorers=["tests.agents:word_budget"])
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["counts"] == counts(4, done=4, failed=0)
    scores = _scores(exp_id)
    # a Steel Thread line's tool_calls and latency are scored as Steel Thread scores them
    tools, latency = "assert:steel_thread_tool_calls", "assert:steel_thread_latency"
    expect = {
        ("paris", "assert:outcome"): True, ("paris", "assert:final_output"): True,
        ("paris", tools): True, ("paris", latency): True,
        ("paris", "tests.agents:word_budget"): True,
        ("tokyo", "assert:outcome"): True, ("tokyo", "assert:final_output"): True,
        ("tokyo", "tests.agents:word_budget"): False,  # 6 words, budget 3
        ("lima", "assert:outcome"): False,  # the agent reported FAILED
        ("lima", tools): True,
        ("currency", "assert:final_output"): True, ("currency", tools): True,
    }
    for key, passed in expect.items():
        assert scores[key].passed is passed, (key, scores[key].explanation)
    assert not any(label in ("assert:tool_calls", "assert:latency") for _, label in scores)
    # Steel Thread's latency score is closeness to the threshold: a fast agent scores low
    paris = scores[("paris", latency)]
    result_ms = paris.meta["latency_ms"] if paris.meta else None
    assert result_ms is not None and result_ms < 5000
    assert paris.value == pytest.approx(1 - (5000 - result_ms) / 5000)
    # custom assertions are data, not scores; word_budget has no budget on 2 cases
    assert not any(label == "assert:custom" for _, label in scores)
    assert scores[("lima", "tests.agents:word_budget")].error is not None
    assert summary["scorers"]["tests.agents:word_budget"]["n_unscored"] == 2


def test_llm_judge_assertions_and_agent_exceptions(agent_worker: WorkerProcess,
                                                   fake_llm: FakeLLM, tmp_path: Path):
    dataset = write_jsonl(tmp_path / "judged.jsonl", [
        {"testcase": "london", "input_config": {"type": "query",
                                                "value": "What is the weather in London?"},
         "assertions": [{"type": "llm_as_judge", "value": "mentions the temperature"},
                        {"type": "final_output", "output_type": "llm_judge",
                         "value": "12 degrees in London"}]},
        {"testcase": "crash", "input_config": {"type": "query", "value": "no city here"},
         "assertions": [{"type": "outcome", "value": "COMPLETE"}]},
    ])
    fake_llm.script([
        {"reply": json.dumps({"reasoning": "states 12 degrees", "score": 5})},
        {"reply": json.dumps({"reasoning": "same temperature", "verdict": "correct"})},
    ])
    exp_id = enqueue_offline_run(dataset=dataset, target="tests.agents:weather_agent")
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["counts"] == counts(2, done=1, failed=1)
    assert summary["errors"] == {"ValueError": 1}
    scores = _scores(exp_id)
    judge = scores[("london", "assert:llm_as_judge")]
    assert (judge.value, judge.passed) == (1.0, True)
    assert judge.judge_model == "openai/gpt-4o-mini" and judge.judge_tokens > 0
    judge_costs = [s.judge_cost_usd for s in scores.values()]
    assert all(c >= 0 for c in judge_costs) and sum(judge_costs) > 0
    assert summary["cost_usd"]["judge"] == pytest.approx(sum(judge_costs), rel=1e-6)
    from models.tables import Experiment

    with session_scope() as s:
        exp = s.get(Experiment, exp_id)
        assert exp is not None and exp.judge_cost_usd == pytest.approx(sum(judge_costs))
    assert scores[("london", "assert:final_output")].passed is True
    assert fake_llm.stats()["total"] == 2
    bodies = [r["body"] for r in fake_llm.requests()]
    assert all(b["temperature"] == 0 for b in bodies)


def test_model_target_with_tool_schemas(agent_worker: WorkerProcess, fake_llm: FakeLLM,
                                        tmp_path: Path):
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    dataset = write_jsonl(tmp_path / "tools.jsonl", [
        {"id": "t1", "input": "Weather in Paris?", "tools": [tool],
         "assertions": [{"type": "tool_calls", "calls": {"get_weather": {"called": True}}},
                        {"type": "tool_calls", "expected": [
                            {"name": "get_weather", "arguments": {"city": "Paris"}}]}]},
        {"id": "t2", "input": "Say hi", "tools": [tool],
         "assertions": [{"type": "tool_calls", "calls": {"get_weather": {"called": False}}}]},
    ])
    fake_llm.script([{"match": "Paris", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}}]}])
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                 api_base=fake_llm.base_url)
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["counts"]["done"] == 2
    with session_scope() as s:
        results = s.exec(select(Result).where(Result.experiment_id == exp_id)).all()
    calls = {r.output or "": r.tool_calls for r in results}
    assert [(c["name"], c["arguments"]) for c in calls[""]] == [
        ("get_weather", {"city": "Paris"})]
    assert calls[""][0]["id"].startswith("call_")
    scores = _scores(exp_id)
    assert scores[("t1", "assert:tool_calls")].passed is True
    assert scores[("t1", "assert:tool_calls#2")].passed is True
    assert scores[("t2", "assert:tool_calls")].passed is True
    sent = [r["body"] for r in fake_llm.requests()]
    assert all(b["tools"][0]["function"]["name"] == "get_weather" for b in sent)
