"""The report commands end to end in embedded mode: a --fail-under label that names no
scorer is refused before anything runs, a run whose budget ran out exits 1, rescore is
idempotent, and a rerun reports the experiment's span and its own."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.tables import Dataset, Experiment, Result, Score
from scheduler.cli.main import app
from tests.factories import write_jsonl
from tests.support import EnvPatch

runner = CliRunner()
ROWS = [{"id": f"q{i}", "input": f"question {i}", "expected": f"question {i}",
         "assertions": [{"type": "contains", "value": "question"}]} for i in range(6)]


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _rows() -> tuple[int, int, int]:
    with session_scope() as s:
        return (s.exec(select(func.count()).select_from(Dataset)).one(),
                s.exec(select(func.count()).select_from(Experiment)).one(),
                s.exec(select(func.count()).select_from(Result)).one())


def test_unknown_gate_label_is_refused_before_the_run(embedded_env, fake_llm: FakeLLM,
                                                      tmp_path: Path):
    dataset = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    base = ["run", dataset, "--model", "openai/fake", "--api-base", fake_llm.base_url]
    code, _, err = _run(*base, "--fail-under", "nosuch=0.9")
    assert code == 2
    assert ("--fail-under 'nosuch': not a scorer of this run (its scorers: "
            "assert:contains, exact_match)") in " ".join(err.split())
    code, _, err = _run(*base, "--scorer", "contains", "--fail-under", "exact_match=0.5")
    assert code == 2 and "its scorers: assert:contains, contains)" in " ".join(err.split())
    code, _, err = _run(*base, "--fail-under", "exact_match=high")
    assert code == 2
    code, _, err = _run(*base, "--baseline", "999", "--fail-under", "exact_match=0.5")
    assert code == 2 and "--baseline 999" in err
    assert _rows() == (0, 0, 0) and fake_llm.stats()["total"] == 0  # nothing ran
    code, out, err = _run(*base, "--fail-under", "assert:contains=1",
                          "--fail-under", "exact_match=0.9")
    assert code == 0, err
    assert "GATE PASSED: assert:contains 1.00 >= 1.00; exact_match 1.00 >= 0.90" in out


def test_a_run_whose_budget_ran_out_exits_1(embedded_env, fake_llm: FakeLLM,
                                            tmp_path: Path):
    rows = [{"id": f"b{i}", "input": "word " * 200, "expected": "x"} for i in range(20)]
    dataset = str(write_jsonl(tmp_path / "budget.jsonl", rows))
    with EnvPatch(EVALQ_CONCURRENCY="1"):
        code, out, err = _run("run", dataset, "--model", "openai/gpt-4o-mini", "--api-base",
                              fake_llm.base_url, "--max-cost", "0.0002", "--json")
    assert code == 1, err
    report = json.loads(out)["report"]
    counts = report["counts"]
    assert report["status"] == "budget_exceeded" and counts["skipped_budget"] >= 1
    assert (f"spent its budget (--max-cost 0.0002 USD): {counts['skipped_budget']} of 20 "
            "items were not run") in " ".join(err.split())
    code, out, _ = _run("status", str(report["experiment_id"]))
    assert code == 0
    assert (f"{counts['done']} done, 0 failed, {counts['skipped_budget']} skipped (budget "
            "spent), 0 pending of 20") in " ".join(out.split())


def _scores(experiment_id: int) -> int:
    with session_scope() as s:
        return s.exec(select(func.count()).select_from(Score)
                      .where(Score.experiment_id == experiment_id)).one()


def test_rescore_is_idempotent(embedded_env, fake_llm: FakeLLM, tmp_path: Path):
    dataset = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    code, out, err = _run("run", dataset, "--model", "openai/fake", "--api-base",
                          fake_llm.base_url, "--scorer", "contains", "--json")
    assert code == 0, err
    exp_id = json.loads(out)["experiment_id"]
    before = _scores(exp_id)  # contains + assert:contains, 6 items each
    assert before == 12

    code, out, err = _run("rescore", str(exp_id), "--scorer", "contains")
    assert code == 0, err
    assert (f"experiment {exp_id} already has scorer contains (same type, version and "
            "parameters): not added again") in " ".join(out.split())
    assert _scores(exp_id) == before
    with session_scope() as s:
        exp = s.get(Experiment, exp_id)
        assert exp is not None
        assert [sc["label"] for sc in exp.scorers or []] == ["contains"]
        assert exp.config_version == 0

    code, out, err = _run("rescore", str(exp_id), "--scorer", "contains", "--scorer",
                          '{"type": "contains", "value": "question 1"}', "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["added"] == ["contains#2"] and answer["already_present"] == ["contains"]
    assert answer["report"]["scorers"]["contains#2"]["mean"] == pytest.approx(1 / 6, abs=1e-6)
    assert _scores(exp_id) == before + 6

    code, out, _ = _run("rescore", str(exp_id), "--scorer",
                        '{"type": "contains", "value": "question 1"}', "--json")
    assert code == 0
    assert json.loads(out) == {"experiment_id": exp_id, "added": [],
                               "already_present": ["contains#2"]}
    assert _scores(exp_id) == before + 6


def test_rerun_reports_the_span_and_its_own_speed(embedded_env, fake_llm: FakeLLM,
                                                 tmp_path: Path):
    dataset = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    fake_llm.script([{"match": "question 3", "status": 400, "message": "bad input"}])
    code, out, _ = _run("run", dataset, "--model", "openai/fake", "--api-base",
                        fake_llm.base_url, "--json")
    assert code == 1
    first = json.loads(out)["report"]
    assert first["last_run"] is None and first["counts"]["failed"] == 1
    code, out, err = _run("rerun", str(first["experiment_id"]), "--failed", "--json")
    assert code == 0, err
    report = json.loads(out)["report"]
    assert report["started_at"] == first["started_at"]  # the first start, kept
    last = report["last_run"]
    assert last["items"] == 1
    assert datetime.fromisoformat(last["started_at"]) >= datetime.fromisoformat(
        first["finished_at"])
    span = (datetime.fromisoformat(report["finished_at"])
            - datetime.fromisoformat(report["started_at"])).total_seconds()
    assert report["wall_time_s"] == round(span, 3)
    assert report["wall_time_s"] >= first["wall_time_s"] + last["wall_time_s"] - 0.002
    assert report["items_per_s"] == round(6 / span, 3)
    rerun_span = (datetime.fromisoformat(report["finished_at"])
                  - datetime.fromisoformat(last["started_at"])).total_seconds()
    assert last["items_per_s"] == round(1 / rerun_span, 3)
    code, out, _ = _run("report", str(first["experiment_id"]))
    assert code == 0 and "from the first start; last re-run" in " ".join(out.split())
