"""Hostile datasets end to end in embedded mode (the CLI, SQLite, the fake model server):
a dataset line never names code to import, and no scorer, however slow or broken, stalls
the other items in flight."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.crud import create_experiment, dataset_item_ids, get_or_create_dataset
from models.db import session_scope
from models.tables import Dataset, DatasetItem, Experiment, Result, Score
from scheduler import enqueue_offline_run, wait_for_experiment
from scheduler.cli.main import app
from scheduler.experiments.reruns import resume
from tests.factories import write_jsonl
from tests.support import EnvPatch
from workers.scorers import Sample, ScoreValue, known_scorers, register_scorer, registry

runner = CliRunner()
SUBJECT = "a" * 40 + "!"
TIMEOUT_S = 1.5  # EVALQ_SCORER_TIMEOUT_S of the timing tests
LATENCY_MS = 400  # model latency of the items in flight beside the hostile ones


def interrupts(sample: Sample) -> ScoreValue:
    """An operator's custom scorer (--scorer module:function) that raises KeyboardInterrupt."""
    raise KeyboardInterrupt


@pytest.fixture
def booby_trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """(module name, marker file): importing the module creates the marker."""
    name = f"evalq_trap_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def f(sample):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


@pytest.fixture
def test_scorers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registered scorers of these tests (gone afterwards): `sleepy` sleeps past any
    deadline, `exits` raises SystemExit."""
    known_scorers()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_scorer("sleepy")
    def sleepy(*, seconds: float = 5.0) -> Any:
        def score(sample: Sample) -> ScoreValue:
            time.sleep(seconds)
            return ScoreValue(1.0)
        return score

    @register_scorer("exits")
    def exits() -> Any:
        def score(sample: Sample) -> ScoreValue:
            sys.exit(3)
        return score

    yield


def _counts() -> tuple[int, int, int]:
    with session_scope() as s:
        return (s.exec(select(func.count()).select_from(Dataset)).one(),
                s.exec(select(func.count()).select_from(Experiment)).one(),
                s.exec(select(func.count()).select_from(Result)).one())


def _scores(exp_id: int) -> dict[tuple[str, str], Score]:
    with session_scope() as s:
        results = {r.id: r for r in s.exec(select(Result).where(Result.experiment_id == exp_id))}
        keys = {i.id: i.key for i in s.exec(select(DatasetItem))}
        return {(keys[results[sc.subject_id].item_id], sc.scorer): sc
                for sc in s.exec(select(Score).where(Score.experiment_id == exp_id))}


def _latencies(exp_id: int) -> dict[str, float]:
    with session_scope() as s:
        keys = {i.id: i.key for i in s.exec(select(DatasetItem))}
        return {keys[r.item_id]: r.latency_ms or 0.0
                for r in s.exec(select(Result).where(Result.experiment_id == exp_id))}


# --- data is never code ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["TRAP:f", "sys:exit", "this:s", "os.system"])
def test_a_dataset_naming_code_is_refused_before_anything_is_imported_or_stored(
        embedded_env, fake_llm: FakeLLM, tmp_path: Path, booby_trap, kind: str):
    module, marker = booby_trap
    kind = kind.replace("TRAP", module)
    dataset = write_jsonl(tmp_path / "hostile.jsonl", [
        {"id": "ok", "input": "fine", "expected": "fine"},
        {"id": "bad", "input": "q", "expected": "q",
         "assertions": [{"type": "contains", "value": "q"}, {"type": kind}]},
    ])
    this_imported = "this" in sys.modules
    before = _counts()
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake",
                                 "--api-base", fake_llm.base_url])
    assert result.exit_code == 2, result.output
    message = result.stderr.replace("\n", " ")
    assert f"{dataset}:2: assertions[1].type: '{kind}' is an import path" in message
    assert "not imported" in message
    assert not marker.exists() and module not in sys.modules
    assert ("this" in sys.modules) == this_imported
    assert _counts() == before and fake_llm.stats()["total"] == 0


@pytest.mark.parametrize("assertion", [
    {"type": "llm_rubric", "criteria": "ok", "api_base": "http://attacker.invalid/v1"},
    {"type": "llm_rubric", "criteria": "ok", "params": {"base_url": "http://attacker.invalid"}},
    {"type": "llm_correctness", "params": {"extra_headers": {"X-Forward": "1"}}},
])
def test_a_dataset_cannot_send_a_judge_and_its_key_elsewhere(
        embedded_env, fake_llm: FakeLLM, tmp_path: Path, assertion: dict[str, Any]):
    """Where a judge's request goes (and the provider key with it) is the operator's
    choice: a dataset line that sets an endpoint or headers is refused, nothing stored."""
    dataset = write_jsonl(tmp_path / "route.jsonl", [
        {"id": "a", "input": "q", "expected": "q", "assertions": [assertion]}])
    before = _counts()
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake",
                                 "--api-base", fake_llm.base_url])
    assert result.exit_code == 2, result.output
    message = result.stderr.replace("\n", " ")
    assert f"{dataset}:1: assertions[0]:" in message and "may not come from a dataset" in message
    assert _counts() == before and fake_llm.stats()["total"] == 0


def test_the_operators_own_scorer_may_still_be_code(embedded_env, fake_llm: FakeLLM,
                                                    tmp_path: Path, booby_trap):
    module, marker = booby_trap
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "input": "q"}])
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake", "--api-base",
                                 fake_llm.base_url, "--scorer", f"{module}:f", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scores"][f"{module}:f"] == 1.0 and marker.exists()


def test_a_stored_item_naming_code_is_could_not_score_in_the_worker(
        embedded_env, fake_llm: FakeLLM, booby_trap):
    """A dataset stored before the check: written to the database directly, then run."""
    module, marker = booby_trap
    items = [{"key": "old", "position": 1, "input": "hello", "expected": "hello", "meta": None,
              "assertions": [{"type": f"{module}:f"}, {"type": "contains", "value": "hell"}],
              "tools": None},
             {"key": "plain", "position": 2, "input": "bye", "expected": "bye", "meta": None,
              "assertions": None, "tools": None}]
    with session_scope() as session:
        dataset, _ = get_or_create_dataset(session=session, name="old", version="v0",
                                           source=None, items=items)
        assert dataset.id is not None
        ids = dataset_item_ids(session=session, dataset_id=dataset.id)
        exp = create_experiment(session=session, experiment_in=Experiment(
            name="old", model="openai/fake", api_base=fake_llm.base_url,
            dataset_id=dataset.id, total_items=len(ids), cache_mode="off",
            scorers=[{"label": "exact_match", "type": "exact_match", "version": "1",
                      "params": {}}]))
        assert exp.id is not None
        exp_id = exp.id
    assert resume(exp_id) == 2
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["status"] == "completed" and summary["counts"]["done"] == 2
    scores = _scores(exp_id)
    refused = scores[("old", f"assert:{module}:f")]
    assert refused.value is None and "import path" in (refused.error or "")
    assert scores[("old", "assert:contains")].value == 1.0
    assert scores[("old", "exact_match")].value == 1.0
    assert scores[("plain", "exact_match")].value == 1.0
    assert not marker.exists() and module not in sys.modules


# --- broken and slow scorers ------------------------------------------------------------------


def test_scorers_raising_systemexit_or_keyboardinterrupt_cannot_score_and_the_run_completes(
        embedded_env, fake_llm: FakeLLM, tmp_path: Path, test_scorers):
    dataset = write_jsonl(tmp_path / "d.jsonl", [
        {"id": f"c{i}", "input": f"case {i}", "assertions": [{"type": "exits"}]}
        for i in range(3)])
    started = time.monotonic()
    result = runner.invoke(app, ["run", str(dataset), "--model", "openai/fake", "--api-base",
                                 fake_llm.base_url, "--scorer", f"{__name__}:interrupts",
                                 "--scorer", '{"type": "contains", "value": "case"}',
                                 "--json", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["counts"]["done"] == 3
    assert summary["scores"]["contains"] == 1.0
    scores = _scores(summary["experiment_id"])
    for i in range(3):
        assert (scores[(f"c{i}", "assert:exits")].error or "").startswith("SystemExit: 3")
        interrupted = scores[(f"c{i}", f"{__name__}:interrupts")]
        assert interrupted.value is None
        assert (interrupted.error or "").startswith("KeyboardInterrupt")


def test_a_slow_sync_scorer_cannot_score_and_holds_nothing_up(embedded_env, fake_llm: FakeLLM,
                                                             tmp_path: Path, test_scorers):
    dataset = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "slow", "input": "x", "assertions": [{"type": "sleepy", "seconds": 30}]},
        {"id": "quick", "input": "y", "assertions": [{"type": "contains", "value": "y"}]}])
    with EnvPatch(EVALQ_SCORER_TIMEOUT_S="0.5"):
        started = time.monotonic()
        exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake",
                                     api_base=fake_llm.base_url)
        summary = wait_for_experiment(exp_id, timeout=20)
        elapsed = time.monotonic() - started
    assert summary["status"] == "completed" and elapsed < 10
    scores = _scores(exp_id)
    slow = scores[("slow", "assert:sleepy")]
    assert slow.value is None
    assert slow.error == "timed out: no verdict within 0.5 s (EVALQ_SCORER_TIMEOUT_S)"
    assert scores[("quick", "assert:contains")].value == 1.0


def _regex_run(fake_llm: FakeLLM, tmp_path: Path, hostile: bool) -> tuple[int, float]:
    """One run of three hostile items (or their harmless twins) beside six items whose
    model calls are in flight while the hostile items are scored."""
    catastrophic = "(a|aa)+$" if hostile else "a+!$"
    rows: list[dict[str, Any]] = [
        {"id": "regex", "input": SUBJECT,
         "assertions": [{"type": "regex", "pattern": catastrophic}]},
        {"id": "nested_plus", "input": SUBJECT,
         "assertions": [{"type": "regex", "pattern": "(a+)+$" if hostile else "a+!$"}]},
        {"id": "schema", "input": json.dumps({"a": SUBJECT}),
         "assertions": [{"type": "json_schema", "schema": {
             "type": "object", "properties": {"a": {"type": "string",
                                                    "pattern": catastrophic}}}}]},
        *({"id": f"beside{i}", "input": f"beside {i}",
           "assertions": [{"type": "contains", "value": "beside"}]} for i in range(6)),
    ]
    dataset = write_jsonl(tmp_path / f"regex-{uuid.uuid4().hex[:6]}.jsonl", rows)
    fake_llm.reset()
    fake_llm.configure(latency_ms=LATENCY_MS)
    fake_llm.script([{"match": "aaaa", "reply": SUBJECT, "latency_ms": 0},
                     {"match": "aaaa", "reply": SUBJECT, "latency_ms": 0},
                     {"match": '{"a"', "reply": json.dumps({"a": SUBJECT}), "latency_ms": 0}])
    started = time.monotonic()
    exp_id = enqueue_offline_run(dataset=dataset, model="openai/fake", scorers=[],
                                 api_base=fake_llm.base_url, cache="off")
    summary = wait_for_experiment(exp_id, timeout=60)
    assert summary["status"] == "completed" and summary["counts"]["done"] == 9
    return exp_id, time.monotonic() - started


def test_catastrophic_regexes_cannot_score_within_the_limit_and_delay_no_one(
        embedded_env, fake_llm: FakeLLM, tmp_path: Path):
    with EnvPatch(EVALQ_SCORER_TIMEOUT_S=str(TIMEOUT_S)):
        _regex_run(fake_llm, tmp_path, hostile=False)  # warm up: first calls are slower
        baseline_id, baseline_s = _regex_run(fake_llm, tmp_path, hostile=False)
        hostile_id, hostile_s = _regex_run(fake_llm, tmp_path, hostile=True)

    baseline, scores = _scores(baseline_id), _scores(hostile_id)
    assert all(s.value == 1.0 for s in baseline.values())
    for key in ("regex", "schema"):
        cannot = scores[(key, f"assert:{'regex' if key == 'regex' else 'json_schema'}")]
        assert cannot.value is None
        # The pattern stops itself ("did not finish"), or the scorer's deadline comes first.
        assert ("did not finish within 1.5 s" in (cannot.error or "")
                or cannot.error == "timed out: no verdict within 1.5 s (EVALQ_SCORER_TIMEOUT_S)")
    # (a+)+$ backtracks catastrophically in the stdlib's re; the regex package sees through it.
    assert scores[("nested_plus", "assert:regex")].value == 0.0
    assert all(scores[(f"beside{i}", "assert:contains")].value == 1.0 for i in range(6))
    # The whole run takes about the limit more than the harmless one, not the regex's time.
    assert hostile_s < baseline_s + 3 * TIMEOUT_S
    # The items in flight beside the hostile ones answered as fast as without them: the
    # event loop was never held (a held loop would add about TIMEOUT_S to each).
    before, after = _latencies(baseline_id), _latencies(hostile_id)
    beside = [f"beside{i}" for i in range(6)]
    assert (median(after[k] for k in beside)
            < median(before[k] for k in beside) + TIMEOUT_S * 1000 / 2)
