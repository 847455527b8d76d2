"""A callable target's recorded latency is the target call's own time (issue 13, point 3).

A 10 ms target scored by an LLM judge was recorded at ~3,400 ms: the clock started before
the callable was loaded and before the thread pool took the call, and the first judge
call imported litellm on the event loop (about 3 s, the loop blocked), so a sync target
that had finished on its thread was only seen as done once the import was over, and an
async target awaited meanwhile was stalled with the loop. The recorded latency must not
include any of that: the target call is timed on its own (on its thread, or around its
coroutine), and judges set litellm up on a thread. The bound asserted is not a speed claim:
the judge is configured to answer in 500 ms, and a target that sleeps 10 ms must be
recorded well under that, whatever the judge, the import or the thread pool did.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlmodel import select

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.settings import get_settings
from models.tables import Result, Score
from tests.factories import write_jsonl
from tests.support import EnvPatch
from workers.offline.targets import call_target

REPO = Path(__file__).resolve().parents[2]
JUDGE_MS = 500
SLEEP_S = 0.010
# A fresh process runs the experiment (the Python API, embedded mode): litellm is not
# imported yet when the first judge call comes, as in `evalq run`.
RUN = """
import json, sys
from scheduler import enqueue_offline_run, wait_for_experiment
exp_id = enqueue_offline_run(dataset=sys.argv[1], target=sys.argv[2],
                             scorers=[json.loads(sys.argv[3])])
wait_for_experiment(exp_id, timeout=120)
print(exp_id)
"""


def sleepy(query: str) -> dict[str, str]:
    """A sync target that sleeps 10 ms and reports how long its own sleep took."""
    started = time.perf_counter()
    time.sleep(SLEEP_S)
    return {"output": f"{(time.perf_counter() - started) * 1000:.3f}"}


async def sleepy_async(query: str) -> dict[str, str]:
    """The same, async."""
    started = time.perf_counter()
    await asyncio.sleep(SLEEP_S)
    return {"output": f"{(time.perf_counter() - started) * 1000:.3f}"}


async def staggered_async(query: str) -> dict[str, str]:
    """An async target that sleeps 10 ms x (1 + the number ending the query): the first
    one done is judged while the others still wait."""
    started = time.perf_counter()
    await asyncio.sleep(SLEEP_S * (1 + int(query.split()[-1])))
    return {"output": f"{(time.perf_counter() - started) * 1000:.3f}"}


@pytest.mark.parametrize("target", ["sleepy", "staggered_async"])
def test_callable_target_latency_excludes_the_judge_and_litellm_import(
        embedded_env: EnvPatch, fake_llm: FakeLLM, tmp_path: Path, target: str) -> None:
    """A fresh process (litellm not imported yet), 8 items in one chunk run at once, each
    judged by llm_rubric whose answer takes 500 ms: every recorded latency is at least the
    target's own sleep and far below the judge's 500 ms. Sync targets finish on their
    threads while the first judge call sets litellm up; async ones (10 to 80 ms) are
    still awaited on the loop then."""
    dataset = write_jsonl(tmp_path / "sleepy.jsonl", [
        {"id": f"c{i}", "input": f"question {i}",
         "assertions": [{"type": "latency", "threshold_ms": JUDGE_MS}]} for i in range(8)])
    fake_llm.script([{"reply": json.dumps({"reasoning": "fine", "score": 5}),
                      "times": 8, "latency_ms": JUDGE_MS}])
    judge = json.dumps({"type": "llm_rubric", "criteria": "answers the question"})
    with EnvPatch(EVALQ_JUDGE_MODEL="openai/gpt-4o-mini",
                  EVALQ_JUDGE_API_BASE=fake_llm.base_url, EVALQ_CONCURRENCY="8",
                  EVALQ_CHUNK_SIZE="8"):
        done = subprocess.run([sys.executable, "-c", RUN, str(dataset), f"{__name__}:{target}",
                               judge], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    exp_id = int(done.stdout.strip().splitlines()[-1])
    with session_scope() as s:
        results = s.exec(select(Result).where(Result.experiment_id == exp_id)).all()
        scores = s.exec(select(Score).where(Score.experiment_id == exp_id)).all()
    assert len(results) == 8
    judged = [sc for sc in scores if sc.scorer == "llm_rubric"]
    assert len(judged) == 8 and all(sc.judge_latency_ms >= JUDGE_MS for sc in judged)
    for result in results:
        own_sleep_ms = float(result.output or "nan")
        assert result.latency_ms is not None
        assert own_sleep_ms <= result.latency_ms < JUDGE_MS, (
            result.latency_ms, own_sleep_ms)
    latency = [sc for sc in scores if sc.scorer == "assert:latency"]
    assert len(latency) == 8 and all(sc.passed for sc in latency)


@pytest.fixture
def slow_import_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A target module whose import takes 300 ms (a heavy agent framework, say)."""
    name = f"slow_target_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import asyncio, time
        time.sleep(0.3)

        def sync_target(query):
            time.sleep({SLEEP_S})
            return "ok"

        async def async_target(query):
            await asyncio.sleep({SLEEP_S})
            return "ok"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("attr", ["sync_target", "async_target"])
def test_loading_the_callable_is_not_part_of_its_latency(slow_import_module: str,
                                                         attr: str) -> None:
    async def call() -> float | None:
        outcome = await call_target(f"{slow_import_module}:{attr}", "q", {}, get_settings())
        assert outcome.error is None, outcome.error
        return outcome.latency_ms

    started = time.perf_counter()
    latency_ms = asyncio.run(call())
    wall_ms = (time.perf_counter() - started) * 1000
    assert wall_ms >= 300  # the import did happen, in this call
    assert latency_ms is not None and SLEEP_S * 1000 <= latency_ms < 300


def test_a_timed_out_target_reports_the_timeout_and_its_time() -> None:
    with EnvPatch(EVALQ_TARGET_TIMEOUT_S="0.05"):
        outcome = asyncio.run(call_target(f"{__name__}:forever", "q", {}, get_settings()))
    assert outcome.error_type == "TargetTimeout" and outcome.outcome == "FAILED"
    assert outcome.latency_ms is not None and outcome.latency_ms >= 50


async def forever(query: str) -> str:
    await asyncio.sleep(10)
    return "late"


def test_an_async_target_is_timed_around_its_own_coroutine() -> None:
    outcome = asyncio.run(call_target(f"{__name__}:sleepy_async", "q", {}, get_settings()))
    assert outcome.error is None
    own = float(outcome.output or "nan")
    assert outcome.latency_ms is not None and own <= outcome.latency_ms < JUDGE_MS

