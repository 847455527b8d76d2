"""Evaluating one (item, repeat): render, call the target, score, write.

Plain functions, shared by the Celery task and by embedded mode, and tested
without a broker. The write is idempotent; a second run of the same (item,
repeat) is skipped unless forced.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from models.crud import existing_result_status, record_item_outcome, spent_usd
from models.db import session_scope
from models.settings import Settings, get_settings
from models.tables import DatasetItem, Experiment, ResultStatus, SubjectType
from workers.errors import ScorerError, WorkerError
from workers.llm.cache import cache_enabled, cache_key, store_for
from workers.llm.calls import ModelOutcome, call_model, redact
from workers.offline.prompt import render_messages
from workers.offline.targets import call_target
from workers.runtime import aio
from workers.scorers import ResolvedScorer, Sample, ScoreValue, rebind
from workers.scorers.registry import bind_from_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """An experiment's immutable configuration, as a worker needs it."""

    experiment_id: int
    model: str
    target: str | None  # a Python callable target, or None for the model
    api_base: str | None
    template: str | None
    params: dict[str, Any]
    scorers: tuple[ResolvedScorer, ...]
    cache_mode: str = "auto"
    config_version: int = 0
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class Case:
    """One test case."""

    item_id: int
    key: str
    input: Any
    expected: Any
    metadata: dict[str, Any]
    assertions: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None

    def custom(self) -> dict[str, Any]:
        """Key/values of the case's `custom` assertions (handed to custom scorers)."""
        merged: dict[str, Any] = {}
        for spec in self.assertions:
            if spec.get("type") == "custom" and isinstance(spec.get("value"), dict):
                merged.update(spec["value"])
        return merged


# Keyed by (database URL, id): ids are only unique within one database.
_plans: dict[tuple[str, int], Plan] = {}
_cases: dict[tuple[str, int], Case] = {}
_cache_lock = threading.Lock()
_MAX_CACHED_CASES = 50_000


def load_plan(experiment_id: int, config_version: int = 0) -> Plan:
    """The experiment's plan, cached per process; reloaded when the experiment's
    configuration is newer than the cached one (scorers added by a rescore)."""
    key = (get_settings().database_url, experiment_id)
    plan = _plans.get(key)
    if plan is None or plan.config_version < config_version:
        with session_scope() as session:
            exp = session.get(Experiment, experiment_id)
            if exp is None:
                raise WorkerError(f"experiment {experiment_id} does not exist in this database")
            plan = Plan(
                experiment_id, exp.model, exp.target, exp.api_base, exp.prompt_template,
                dict(exp.model_params or {}),
                tuple(rebind(spec) for spec in exp.scorers or []),
                exp.cache_mode, exp.config_version, exp.max_cost_usd,
            )
        with _cache_lock:
            _plans[key] = plan
    return plan


def cached_case(item_id: int) -> Case | None:
    """A test case from this process's cache, if there."""
    return _cases.get((get_settings().database_url, item_id))


def cache_case(item: DatasetItem) -> Case:
    """The Case of a dataset row, remembered (dataset items are immutable)."""
    assert item.id is not None
    case = Case(item.id, item.key, item.input, item.expected, dict(item.meta or {}),
                tuple(item.assertions or ()), tuple(item.tools) if item.tools else None)
    with _cache_lock:
        if len(_cases) >= _MAX_CACHED_CASES:
            _cases.clear()
        _cases[(get_settings().database_url, item.id)] = case
    return case


def load_case(item_id: int) -> Case:
    """The test case (cached: dataset items are immutable)."""
    case = cached_case(item_id)
    if case is None:
        with session_scope() as session:
            item = session.get(DatasetItem, item_id)
            if item is None:
                raise WorkerError(f"dataset item {item_id} does not exist in this database")
            case = cache_case(item)
    return case


def _unscorable(label: str, name: str, why: str) -> ResolvedScorer:
    """A scorer that can only say "could not score", and why."""

    def score(sample: Sample) -> ScoreValue:
        raise ScorerError(why)

    return ResolvedScorer(label, name, "1", {}, score)


def assertion_scorers(case: Case) -> list[ResolvedScorer]:
    """The test case's own assertions, as scorers labelled assert:TYPE. They are data:
    registered scorers only (a module:function path is never imported). An assertion that
    cannot be bound (a dataset stored before a check existed) is "could not score" for
    this case, with the reason; the other assertions still score."""
    scorers: list[ResolvedScorer] = []
    seen: dict[str, int] = {}
    for spec in case.assertions:
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


def _score_row(scorer: ResolvedScorer, verdict: ScoreValue | None, error: str | None) -> dict:
    row: dict[str, Any] = {
        "subject_type": SubjectType.RESULT.value,
        "scorer": scorer.label,
        "scorer_version": scorer.version,
        "value": None, "passed": None, "explanation": None, "error": error, "meta": None,
        "judge_model": None, "judge_cost_usd": 0.0, "judge_tokens": 0,
        "judge_latency_ms": None,
    }
    if verdict is not None:
        row.update(
            value=verdict.value, passed=verdict.passed, explanation=verdict.explanation,
            meta=verdict.metadata, judge_model=verdict.judge_model,
            judge_cost_usd=verdict.judge_cost_usd, judge_tokens=verdict.judge_tokens,
            judge_latency_ms=verdict.judge_latency_ms,
        )
    return row


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


async def run_scorer(scorer: ResolvedScorer, sample: Sample) -> dict[str, Any]:
    """One Score row; a scorer that cannot score yields a row with `error`, not a 0. Each
    call has a deadline (`scorer_deadline`); missing it, or raising anything (SystemExit
    and KeyboardInterrupt included), is "could not score" for this sample only."""
    settings = get_settings()
    limit = scorer_deadline(scorer, settings)
    try:
        verdict = await _call(scorer, sample, time.monotonic() + limit)
        if isinstance(verdict, bool | int | float):
            verdict = ScoreValue(float(verdict))
        if not isinstance(verdict, ScoreValue):
            raise ScorerError(f"returned {type(verdict).__name__}, not a ScoreValue")
        return _score_row(scorer, verdict, None)
    except ScorerError as exc:
        return _score_row(scorer, None, str(exc))
    except _PastDeadline:
        setting = ("EVALQ_REQUEST_TIMEOUT_S x EVALQ_MAX_ATTEMPTS"
                   if limit > settings.scorer_timeout_s else "EVALQ_SCORER_TIMEOUT_S")
        log.warning("scorer %s gave no verdict within %g s; a thread still running it, if "
                    "any, is left to finish on its own", scorer.label, limit)
        return _score_row(scorer, None, f"timed out: no verdict within {limit:g} s ({setting})")
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken scorer must not crash the item
        return _score_row(scorer, None, redact(f"{type(exc).__name__}: {exc}")[:2000])


async def run_target(plan: Plan, case: Case, settings: Settings, repeat: int = 0
                     ) -> ModelOutcome:
    """What the target produced for one test case (a model call, or a Python callable)."""
    if plan.target is not None:
        context = {"id": case.key, "input": case.input, "metadata": case.metadata,
                   "tools": list(case.tools) if case.tools else None}
        return await call_target(plan.target, case.input, context, settings)
    try:
        messages = render_messages(plan.template, case.input, case.metadata)
    except WorkerError as exc:
        return ModelOutcome(error=str(exc), error_type=type(exc).__name__)
    params = dict(plan.params)
    if case.tools:
        params["tools"] = list(case.tools)
    if not cache_enabled(plan.cache_mode, params):
        return await call_model(model=plan.model, messages=messages, settings=settings,
                                api_base=plan.api_base, params=params)
    store = store_for(settings)
    key = cache_key(model=plan.model, api_base=plan.api_base, messages=messages,
                    params=params, repeat=repeat)
    hit = await asyncio.to_thread(store.get, key)
    if hit is not None:
        return ModelOutcome(**{**hit, "cached": True, "cost_usd": 0.0, "attempts": 0})
    outcome = await call_model(model=plan.model, messages=messages, settings=settings,
                               api_base=plan.api_base, params=params)
    if outcome.error is None:
        await asyncio.to_thread(store.put, key, cacheable(outcome))
    return outcome


def cacheable(outcome: ModelOutcome) -> dict[str, Any]:
    """The fields of a response worth replaying from the cache."""
    return {"output": outcome.output, "tool_calls": outcome.tool_calls,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens, "cost_known": outcome.cost_known,
            "response_model": outcome.response_model, "outcome": outcome.outcome,
            "latency_ms": outcome.latency_ms}


async def evaluate(plan: Plan, case: Case, settings: Settings, repeat: int = 0
                   ) -> tuple[ModelOutcome, list[dict]]:
    """Call the target for one test case and score what it produced."""
    outcome = await run_target(plan, case, settings, repeat)
    if outcome.error is not None:
        return outcome, []
    sample = Sample(
        input=case.input, expected=case.expected, output=outcome.output,
        metadata=case.metadata, tool_calls=outcome.tool_calls,
        latency_ms=outcome.latency_ms,
        cost_usd=outcome.cost_usd if outcome.cost_known else None,
        outcome=outcome.outcome, steps=outcome.steps, custom=case.custom(),
    )
    scorers = list(plan.scorers)
    if case.assertions:  # binding checks data (a schema, a pattern): not on the loop
        scorers += await aio.in_thread(assertion_scorers, case)
    scores = [await run_scorer(s, sample) for s in scorers]
    return outcome, scores


def result_row(experiment_id: int, item_id: int, repeat: int, outcome: ModelOutcome) -> dict:
    """The Result row for an outcome."""
    return {
        "experiment_id": experiment_id, "item_id": item_id, "repeat": repeat,
        "status": ResultStatus.ERROR.value if outcome.error else ResultStatus.OK.value,
        "output": outcome.output, "tool_calls": outcome.tool_calls,
        "outcome": outcome.outcome, "steps": outcome.steps,
        "error": outcome.error, "error_type": outcome.error_type,
        "latency_ms": outcome.latency_ms, "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens, "cost_usd": outcome.cost_usd,
        "cost_known": outcome.cost_known, "attempts": outcome.attempts,
        "response_model": outcome.response_model, "cached": outcome.cached,
    }


def _budget_spent(experiment_id: int, budget: float) -> bool:
    with session_scope() as session:
        return spent_usd(session=session, experiment_id=experiment_id) >= budget


def execute_item(experiment_id: int, item_id: int, repeat: int, *, force: bool = False,
                 config: int = 0) -> str:
    """Evaluate and store one (item, repeat). Returns its status, or "skipped" when a
    Result already exists (a redelivered task) and `force` is not set."""
    settings = get_settings()
    if not force:
        with session_scope() as session:
            if existing_result_status(
                session=session, experiment_id=experiment_id, item_id=item_id, repeat=repeat
            ):
                return "skipped"
    plan, case = load_plan(experiment_id, config), load_case(item_id)
    if plan.max_cost_usd is not None and _budget_spent(experiment_id, plan.max_cost_usd):
        outcome = ModelOutcome(error=f"skipped: the experiment's budget of "
                               f"${plan.max_cost_usd:g} is spent (--max-cost)",
                               error_type="BudgetExceeded")
        row = result_row(experiment_id, item_id, repeat, outcome)
        row["status"] = ResultStatus.SKIPPED_BUDGET.value
        with session_scope() as session:
            record_item_outcome(session=session, result_in=row, scores_in=[])
        return str(row["status"])
    outcome, scores = aio.run(evaluate(plan, case, settings, repeat))
    row = result_row(experiment_id, item_id, repeat, outcome)
    with session_scope() as session:
        record_item_outcome(session=session, result_in=row, scores_in=scores)
    return str(row["status"])
