"""Scoring: running scorers on a Sample, the one way offline runs, online evaluators,
rescores and comparisons all score.

A Sample is what a scorer sees; `sample_of` builds it from a target's output and its test
case, `run_sample` from a production run. `run_scorer` calls one scorer with a deadline and
turns whatever happens into a verdict (a ScoreBase: a Score not yet attached to its
subject); a scorer that cannot score yields a verdict with `error`, never a 0.
`assertion_scorers` binds a test case's own assertions.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from models.settings import Settings, get_settings
from models.tables import ProductionRun, ScoreBase, TargetOutput
from workers.errors import ScorerError, WorkerError
from workers.llm.calls import redact
from workers.runtime import aio
from workers.scorers import ResolvedScorer, Sample, ScoreValue
from workers.scorers.registry import bind_from_data

log = logging.getLogger(__name__)


# --- samples --------------------------------------------------------------------------


def sample_of(output: TargetOutput, *, input: Any, expected: Any,
              metadata: dict[str, Any], custom: dict[str, Any] | None = None) -> Sample:
    """What scorers see of one test case's output (a fresh one, or a stored Result)."""
    return Sample(
        input=input, expected=expected, output=output.output, metadata=metadata,
        tool_calls=output.tool_calls, latency_ms=output.latency_ms,
        cost_usd=output.cost_usd if output.cost_known else None,
        outcome=output.outcome, steps=output.steps, custom=custom or {},
    )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def run_sample(run: ProductionRun) -> Sample:
    """What scorers see of a production run."""
    meta = dict(run.meta or {})
    meta.update(source=run.source, model=run.model, plan=run.plan)
    return Sample(
        input=run.input, expected=meta.get("expected"), output=_text(run.output),
        metadata=meta, tool_calls=run.tool_calls, latency_ms=run.latency_ms,
        cost_usd=run.cost_usd, outcome=run.status, steps=run.steps,
    )


# --- a test case's assertions -----------------------------------------------------------


def _unscorable(label: str, name: str, why: str) -> ResolvedScorer:
    """A scorer that can only say "could not score", and why."""

    def score(sample: Sample) -> ScoreValue:
        raise ScorerError(why)

    return ResolvedScorer(label, name, "1", {}, score)


def assertion_scorers(assertions: Sequence[dict[str, Any]]) -> list[ResolvedScorer]:
    """A test case's own assertions, as scorers labelled assert:TYPE. They are data:
    registered scorers only (a module:function path is never imported). An assertion that
    cannot be bound (a dataset stored before a check existed) is "could not score" for
    this case, with the reason; the other assertions still score."""
    scorers: list[ResolvedScorer] = []
    seen: dict[str, int] = {}
    for spec in assertions:
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "custom":
            continue  # data for custom scorers (Sample.custom), not a check of its own
        name = kind.strip() if isinstance(kind, str) else "?"
        seen[name] = seen.get(name, 0) + 1
        label = f"assert:{name}" + (f"#{seen[name]}" if seen[name] > 1 else "")
        try:
            scorers.append(bind_from_data(spec, label))
        except WorkerError as exc:
            scorers.append(_unscorable(label, name, f"invalid assertion: {exc}"))
        except Exception as exc:  # noqa: BLE001 - data (a too deep schema) must not crash the item
            scorers.append(_unscorable(label, name, f"invalid assertion: "
                                       f"{type(exc).__name__}: {str(exc)[:500]}"))
    return scorers


# --- running scorers --------------------------------------------------------------------


def _verdict(scorer: ResolvedScorer, value: ScoreValue | None, error: str | None
             ) -> ScoreBase:
    verdict = ScoreBase.model_construct(
        scorer=scorer.label, scorer_version=scorer.version, value=None, passed=None,
        explanation=None, error=error, meta=None, judge_model=None, judge_cost_usd=0.0,
        judge_tokens=0, judge_latency_ms=None)
    if value is not None:
        verdict.value, verdict.passed = value.value, value.passed
        verdict.explanation, verdict.meta = value.explanation, value.metadata
        verdict.judge_model, verdict.judge_cost_usd = value.judge_model, value.judge_cost_usd
        verdict.judge_tokens, verdict.judge_latency_ms = value.judge_tokens, value.judge_latency_ms
    return verdict


def scorer_deadline(scorer: ResolvedScorer, settings: Settings) -> float:
    """Seconds one call of `scorer` may take: EVALQ_SCORER_TIMEOUT_S, or for a scorer that
    calls a model (a judge) its calls' own bound, EVALQ_REQUEST_TIMEOUT_S x
    EVALQ_MAX_ATTEMPTS, when that is longer."""
    if scorer.network:
        return max(settings.scorer_timeout_s, settings.request_timeout_s * settings.max_attempts)
    return settings.scorer_timeout_s


class _Raised:
    """What an async scorer raised, carried out of its task as a value: a SystemExit or
    KeyboardInterrupt raised out of a task would stop the event loop itself."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _PastDeadline(Exception):
    """The scorer gave no verdict before its deadline."""


async def _guarded(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - see _Raised
        return _Raised(exc)


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


async def _within(awaitable: Awaitable[Any], deadline: float) -> Any:
    """The awaitable's result, or _PastDeadline at `deadline` (time.monotonic()). Not
    asyncio.wait_for, which waits for the cancelled work to end: a scorer may never."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise _PastDeadline
    return task.result()


async def _call(scorer: ResolvedScorer, sample: Sample, deadline: float) -> Any:
    """The scorer's verdict: a coroutine function runs on the loop; anything else on a
    daemon thread, never on the loop (an awaitable it returns is awaited on the loop)."""
    if inspect.iscoroutinefunction(scorer.fn):
        verdict = await _within(_guarded(scorer.fn(sample)), deadline)
    else:
        verdict = await _within(aio.in_thread(scorer.fn, sample), deadline)
        if inspect.isawaitable(verdict):
            verdict = await _within(_guarded(verdict), deadline)
    if isinstance(verdict, _Raised):
        raise verdict.error
    return verdict


async def run_scorer(scorer: ResolvedScorer, sample: Sample) -> ScoreBase:
    """One scorer's verdict on one sample. Each call has a deadline (`scorer_deadline`);
    missing it, or raising anything (SystemExit and KeyboardInterrupt included), is "could
    not score" for this sample only."""
    settings = get_settings()
    limit = scorer_deadline(scorer, settings)
    try:
        value = await _call(scorer, sample, time.monotonic() + limit)
        if isinstance(value, bool | int | float):
            value = ScoreValue(float(value))
        if not isinstance(value, ScoreValue):
            raise ScorerError(f"returned {type(value).__name__}, not a ScoreValue")
        return _verdict(scorer, value, None)
    except ScorerError as exc:
        return _verdict(scorer, None, str(exc))
    except _PastDeadline:
        setting = ("EVALQ_REQUEST_TIMEOUT_S x EVALQ_MAX_ATTEMPTS"
                   if limit > settings.scorer_timeout_s else "EVALQ_SCORER_TIMEOUT_S")
        log.warning("scorer %s gave no verdict within %g s; a thread still running it, if "
                    "any, is left to finish on its own", scorer.label, limit)
        return _verdict(scorer, None, f"timed out: no verdict within {limit:g} s ({setting})")
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken scorer must not crash the item
        return _verdict(scorer, None, redact(f"{type(exc).__name__}: {exc}")[:2000])


async def score_sample(scorers: Sequence[ResolvedScorer], sample: Sample) -> list[ScoreBase]:
    """Every scorer's verdict on one sample, in order."""
    return [await run_scorer(s, sample) for s in scorers]


async def score_samples(scorer: ResolvedScorer, samples: Sequence[Sample], *,
                        concurrency: int) -> list[ScoreBase]:
    """One scorer's verdicts on many samples, at most `concurrency` at a time (judges)."""
    limit = asyncio.Semaphore(concurrency)

    async def one(sample: Sample) -> ScoreBase:
        async with limit:
            return await run_scorer(scorer, sample)

    return list(await asyncio.gather(*(one(s) for s in samples)))
