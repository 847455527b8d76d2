"""Embedded mode end to end through the CLI and the Python API: real litellm HTTP calls
to the fake server, a real SQLite file, the same task code on a thread pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.tables import Dataset, Experiment, Result, Score
from scheduler import enqueue_offline_run, wait_for_experiment
from scheduler.cli.main import app
from tests.factories import counts, write_jsonl
from tests.support import EnvPatch

runner = CliRunner()
ROWS = [
    {"id": "a", "input": "alpha", "expected": "ALPHA", "metadata": {"category": "x"}},
    {"id": "b", "input": "bravo", "expected": "bravo!"},
    {"id": "c", "input": "charlie", "expected": "delta"},
    {"id": "d", "input": "echo", "expected": ["nope", "echo"]},
]


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _table_counts() -> tuple[int, int, int]:
    with session_scope() as s:
        return (s.exec(select(func.count()).select_from(Dataset)).one(),
                s.exec(select(func.count()).select_from(Experiment)).one(),
                s.exec(select(func.count()).select_from(Result)).one())


def test_cli_run_scores_and_report_matches_database(embedded_env, fake_llm: FakeLLM,
                                                    tmp_path: Path):
    dataset = write_jsonl(tmp_path / "letters.jsonl", ROWS)
    code, out, err = _run("run", str(dataset), "--model", "openai/fake",
                          "--api-base", fake_llm.base_url, "--scorer", "exact_match",
                          "--scorer", '{"type": "contains", "value": "a"}', "--json")
    assert code == 0, err
    summary = json.loads(out)
    # The fake echoes: alpha==ALPHA (case-insensitive), echo matches the 2nd expected.
    assert summary["status"] == "completed"
    assert summary["counts"] == counts(4, done=4, failed=0)
    assert summary["scores"]["exact_match"] == pytest.approx(0.5)
    assert summary["scores"]["contains"] == pytest.approx(0.75)  # alpha bravo charlie
    assert fake_llm.stats()["total"] == 4

    code, out, _ = _run("report", str(summary["experiment_id"]), "--json")
    assert code == 0
    report = json.loads(out)
    exp_id = summary["experiment_id"]
    with session_scope() as s:
        results = s.exec(select(Result).where(Result.experiment_id == exp_id)).all()
        em = s.exec(select(Score.value).where(Score.experiment_id == exp_id,
                                              Score.scorer == "exact_match")).all()
    assert report["counts"]["done"] == sum(r.status == "ok" for r in results)
    assert report["scorers"]["exact_match"]["mean"] == pytest.approx(sum(em) / len(em))
    assert report["scorers"]["exact_match"]["n_scored"] == len(em)
    assert report["tokens"]["prompt"] == sum(r.prompt_tokens for r in results)
    assert report["tokens"]["completion"] == sum(r.completion_tokens for r in results)
    assert report["latency_ms"]["p50"] is not None
    assert report["cost_usd"]["results_without_price"] == 4  # "openai/fake" has no price


def test_cli_human_report_and_status(embedded_env, fake_llm: FakeLLM, tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    code, out, err = _run("run", str(dataset), "--model", "openai/fake",
                          "--api-base", fake_llm.base_url)
    assert code == 0, err
    assert "exact_match" in out and "2 done" in out
    code, out, _ = _run("status", "1")
    assert code == 0 and "completed" in out and "2 done" in out
    code, out, _ = _run("list", "--json")
    listed = json.loads(out)[0]
    assert listed["status"] == "completed" and listed["dataset"].startswith("d@")
    assert listed["scores"] == {"exact_match": 0.5} and listed["cost_usd"] == 0.0


def test_permanent_model_errors_are_recorded_not_crashing(embedded_env, fake_llm: FakeLLM,
                                                           tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    fake_llm.script([{"match": "bravo", "status": 400, "message": "bad input"},
                     {"match": "charlie", "status": 429, "times": 2}])
    code, out, err = _run("run", str(dataset), "--model", "openai/fake",
                          "--api-base", fake_llm.base_url, "--json")
    assert code == 1, err  # an item failed: exit 1 (README "Exit codes")
    report = json.loads(out)["report"]
    assert report["status"] == "completed"
    assert report["counts"]["done"] == 3 and report["counts"]["failed"] == 1
    assert report["errors"] == {"BadRequestError": 1}
    with session_scope() as s:
        rows = {r.output or r.error_type: r.attempts for r in s.exec(select(Result)).all()}
    assert rows["BadRequestError"] == 1  # never retried
    assert rows["charlie"] == 3  # two 429s, then success


def test_repeats_and_python_api(embedded_env, fake_llm: FakeLLM, tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake", scorers=["exact_match"],
                                 prompt="{input}", repeats=3, api_base=fake_llm.base_url,
                                 model_params={"temperature": 0}, name="api")
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["counts"]["total"] == 12 and summary["counts"]["done"] == 12
    assert summary["name"] == "api"
    assert fake_llm.stats()["total"] == 12
    temps = [r["body"].get("temperature") for r in fake_llm.requests()]
    assert temps == [0] * 12, temps


def test_demo_runs_offline_with_non_trivial_scores(embedded_env):
    code, out, err = _run("demo", "--json")
    assert code == 0, err
    scores = json.loads(out)["scores"]
    assert set(scores) == {"exact_match", "contains"}
    for value in scores.values():
        assert 0.0 < value < 1.0


@pytest.mark.parametrize(("rows", "message"), [
    ([ROWS[0], ROWS[1], '{"id": "x", "input": "tru'], ":3: invalid JSON"),
    ([ROWS[0], {"id": "y", "expected": "z"}], ':2: "input" is missing'),
    ([ROWS[0], {"input": "q"}], ':2: "expected" is missing'),
])
def test_malformed_dataset_exits_2_and_writes_nothing(embedded_env, tmp_path: Path, rows,
                                                      message: str):
    dataset = write_jsonl(tmp_path / "bad.jsonl", rows)
    before = _table_counts()
    code, _, err = _run("run", str(dataset), "--model", "openai/fake", "--scorer", "exact_match")
    assert code == 2
    assert f"{dataset}{message}" in err.replace("\n", "")
    assert _table_counts() == before


@pytest.mark.parametrize(("args", "message"), [
    (["--scorer", "no_such_scorer"], "known scorers: contains, contains_all"),
    (["--scorer", '{"type": "regex", "pattern": "("}'], "invalid regular expression"),
    (["--param", "api_key=sk-123"], "looks like a secret"),
    (["--prompt", "Q: {question}"], "uses {question}"),
    (["--repeats", "100000"], "repeats must be between"),
    (["--target", "no_such_module:run"], "cannot import target"),
    (["--target", "tests.factories:make_items", "--prompt", "{input}"], "model targets only"),
])
def test_bad_options_exit_2_and_write_nothing(embedded_env, tmp_path: Path, args, message):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    before = _table_counts()
    code, _, err = _run("run", str(dataset), "--model", "openai/fake", *args)
    assert code == 2, err
    assert message in err.replace("\n", " ")
    assert _table_counts() == before


def test_nothing_to_score_is_refused(embedded_env, tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"input": "a"}, {"input": "b"}])
    code, _, err = _run("run", str(dataset), "--model", "openai/fake")
    assert code == 2
    assert "nothing to score" in err


def test_multi_turn_messages_input_is_sent_as_is(embedded_env, fake_llm: FakeLLM,
                                                 tmp_path: Path):
    conversation = [{"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Let's count."},
                    {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": "What comes after 41?"}]
    dataset = write_jsonl(tmp_path / "chat.jsonl",
                          [{"id": "c1", "input": conversation, "expected": "42"}])
    fake_llm.configure(answers={"after 41": "42"})
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                 api_base=fake_llm.base_url, scorers=["exact_match"])
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["scorers"]["exact_match"]["mean"] == 1.0
    assert fake_llm.requests()[0]["body"]["messages"] == conversation


def test_cache_in_the_database_in_embedded_mode(embedded_env, fake_llm: FakeLLM,
                                                tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    args = ["run", str(dataset), "--model", "openai/fake", "--api-base", fake_llm.base_url,
            "--cache", "--json"]
    assert _run(*args)[0] == 0
    assert fake_llm.stats()["total"] == 4
    code, out, _ = _run(*args)
    assert code == 0 and fake_llm.stats()["total"] == 4
    assert json.loads(out)["report"]["cache"]["hits"] == 4


def test_budget_stops_new_calls_and_marks_the_rest(embedded_env, fake_llm: FakeLLM,
                                                   tmp_path: Path):
    rows = [{"id": f"b{i}", "input": "word " * 200, "expected": "x"} for i in range(30)]
    dataset = write_jsonl(tmp_path / "budget.jsonl", rows)
    with EnvPatch(EVALQ_CONCURRENCY="1"):
        exp_id = enqueue_offline_run(dataset=dataset, model="openai/gpt-4o-mini",
                                     api_base=fake_llm.base_url, max_cost_usd=0.0002)
        report = wait_for_experiment(exp_id, timeout=60)
    c = report["counts"]
    assert report["status"] == "budget_exceeded"
    assert c["done"] >= 1 and c["skipped_budget"] >= 1 and c["done"] + c["skipped_budget"] == 30
    assert fake_llm.stats()["total"] == c["done"]  # skipped items made no call
    per_call = report["cost_usd"]["target"] / c["done"]
    assert 0.0002 <= report["cost_usd"]["total"] < 0.0002 + per_call + 1e-12
    code, out, _ = _run("report", str(exp_id))
    assert code == 0 and "budget_exceeded" in out


def test_unknown_model_is_refused_before_anything_is_written(embedded_env, tmp_path: Path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    before = _table_counts()
    code, _, err = _run("run", str(dataset), "--model", "nosuchprovider/some-model")
    assert code == 2 and "unknown model" in err
    assert _table_counts() == before


def test_ci_gate_exit_codes_junit_and_regression(embedded_env, fake_llm: FakeLLM,
                                                 tmp_path: Path):
    import xml.etree.ElementTree as ET

    rows = [{"id": f"g{i}", "input": f"item {i}.", "expected": f"item {i}."} for i in range(40)]
    dataset = write_jsonl(tmp_path / "gate.jsonl", rows)
    base = ["run", str(dataset), "--model", "openai/fake", "--api-base", fake_llm.base_url]
    code, out, _ = _run(*base, "--fail-under", "exact_match=0.9", "--junit",
                        str(tmp_path / "j.xml"))
    assert code == 0 and "GATE PASSED" in out
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "40" and suite.get("failures") == "0"
    baseline_id = json.loads(_run("list", "--json")[1])[0]["id"]

    fake_llm.configure(answers={f"item {i}.": "wrong" for i in range(0, 40, 2)})  # half wrong
    code, out, _ = _run(*base, "--fail-under", "exact_match=0.9")
    assert code == 1 and "GATE FAILED" in out and "exact_match 0.50 < 0.90" in out
    code, out, _ = _run(*base, "--fail-under", "exact_match=0.4")
    assert code == 0
    code, out, _ = _run(*base, "--baseline", str(baseline_id), "--fail-on-regression", "--json")
    assert code == 1
    gate = json.loads(out)["gate"]
    assert gate["ok"] is False and "regressed" in gate["line"]
    candidate_id = json.loads(out)["experiment_id"]
    code, out, _ = _run("compare", str(baseline_id), str(candidate_id), "--json")
    scorer = json.loads(out)["scorers"]["exact_match"]
    assert scorer["verdict"] == "regressed" and scorer["n_pass_to_fail"] == 20
    code, _, err = _run(*base, "--fail-under", "exact_match=high")
    assert code == 2
    code, _, err = _run(*base, "--fail-on-regression")
    assert code == 2 and "--baseline" in err


def test_console_script_imports_targets_from_the_current_directory(embedded_env):
    """`evalq` (the installed entry point, not `python -m`) finds tests.agents from the
    repository root, as the README's agent example runs it."""
    import subprocess
    import sys

    evalq = Path(sys.executable).parent / "evalq"
    assert evalq.exists(), "pip install -e . installs the evalq console script"
    done = subprocess.run([str(evalq), "run", "steel_thread", "--target",
                           "tests.agents:weather_agent", "--json"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["report"]
    assert report["counts"]["done"] == 4
    assert report["scorers"]["assert:outcome"]["ci_low"] >= 0.0  # clipped to [0, 1]
