"""Targets: what produces the output of a test case.

- A litellm model with a prompt template (or a `messages` input), optionally offered the
  test case's tool schemas; its tool calls are recorded.
- A Python callable given as "package.module:function", for a whole agent or pipeline.
  It gets the test case input (and, if it has a `case` parameter, {"id", "input",
  "metadata", "tools"}) and returns a string, or a dict with "output" and optionally
  "tool_calls", "steps", "outcome" (or "status"), "cost_usd", "prompt_tokens",
  "completion_tokens". Sync callables run on a thread of their own, async ones on the
  loop. The recorded latency is the call's own time, not loading the callable or waiting
  for the loop.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from models.settings import Settings
from models.tables import TargetOutput
from workers.errors import TargetError
from workers.llm.calls import redact
from workers.runtime import aio

_callables: dict[str, Callable[..., Any]] = {}


def load_callable(path: str) -> Callable[..., Any]:
    """The callable at "package.module:function" (cached), or TargetError."""
    fn = _callables.get(path)
    if fn is not None:
        return fn
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"target {path!r} must look like package.module:function")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise TargetError(
            f"cannot import target {path!r}: {exc} (it must be importable where the "
            "workers run: install its package there or set PYTHONPATH)"
        ) from None
    if not callable(obj):
        raise TargetError(f"target {path!r} is a {type(obj).__name__}, not a callable")
    _callables[path] = obj
    return obj  # type: ignore[no-any-return]


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _normalise_calls(calls: Any) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    out = []
    for call in calls:
        if isinstance(call, str):
            out.append({"name": call, "arguments": {}})
        elif isinstance(call, dict) and "name" in call:
            out.append({"name": str(call["name"]), "arguments": call.get("arguments", {}),
                        **({"id": call["id"]} if "id" in call else {})})
        else:
            raise TargetError(f"a tool call must be a name or a {{\"name\", \"arguments\"}} "
                              f"object, got {call!r:.100}")
    return out


def outcome_from_return(value: Any) -> TargetOutput:
    """A callable target's return value as an outcome."""
    if not isinstance(value, dict):
        return TargetOutput(output=_as_text(value), outcome="COMPLETE", attempts=1)
    status = value.get("outcome", value.get("status"))
    steps = value.get("steps")
    return TargetOutput(
        output=_as_text(value.get("output")),
        tool_calls=_normalise_calls(value.get("tool_calls")),
        steps=list(steps) if steps is not None else None,
        outcome=str(status) if status is not None else "COMPLETE",
        cost_usd=float(value.get("cost_usd") or 0.0),
        prompt_tokens=int(value.get("prompt_tokens") or 0),
        completion_tokens=int(value.get("completion_tokens") or 0),
        attempts=1,
    )


def _accepts_case(fn: Callable[..., Any]) -> bool:
    try:
        return "case" in inspect.signature(fn).parameters
    except (ValueError, TypeError):  # some builtins have no signature
        return False


class _Stopwatch:
    """The target call's own time: started when the call begins (on its thread, or when
    its coroutine first runs), stopped when it returns or raises. Loading the callable,
    waiting for a thread and a busy event loop (a judge importing litellm on it, say)
    before the caller resumes are not part of it."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.stopped: float | None = None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.stopped = time.perf_counter()

    async def run_async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.stopped = time.perf_counter()

    def elapsed_ms(self) -> float | None:
        """Milliseconds the call took (so far, if it has not returned); None if it never
        started."""
        if self.started is None:
            return None
        return ((self.stopped or time.perf_counter()) - self.started) * 1000


async def call_target(path: str, case_input: Any, context: dict[str, Any],
                      settings: Settings) -> TargetOutput:
    """Run a callable target once; its exception is recorded on the outcome, not raised.
    `latency_ms` is the call's own time (see _Stopwatch)."""
    watch = _Stopwatch()
    try:
        fn = load_callable(path)
        kwargs = {"case": context} if _accepts_case(fn) else {}
        if inspect.iscoroutinefunction(fn):
            call: Awaitable[Any] = watch.run_async(fn, case_input, **kwargs)
        else:  # a thread of its own: no queue behind other blocking work, and a call that
            # never returns holds only its thread (never the process's exit)
            call = aio.in_thread(functools.partial(watch.run, fn, case_input, **kwargs))
        value = await asyncio.wait_for(call, timeout=settings.target_timeout_s)
        outcome = outcome_from_return(value)
    except TimeoutError:
        outcome = TargetOutput(error=f"target did not return within "
                               f"{settings.target_timeout_s} s (EVALQ_TARGET_TIMEOUT_S)",
                               error_type="TargetTimeout", attempts=1, outcome="FAILED")
    except Exception as exc:  # noqa: BLE001 - the target's failure is this item's result
        outcome = TargetOutput(error=redact(f"{type(exc).__name__}: {exc}")[:4000],
                               error_type=type(exc).__name__, attempts=1, outcome="FAILED")
    outcome.latency_ms = watch.elapsed_ms()
    return outcome
