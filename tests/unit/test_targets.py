"""Callable targets: import errors, return shapes, exceptions recorded per item."""

from __future__ import annotations

import asyncio

import pytest

from models.settings import Settings
from workers.errors import TargetError
from workers.offline.targets import call_target, load_callable, outcome_from_return

SETTINGS = Settings(target_timeout_s=5)


def _run(path: str, value: object, context: dict | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(call_target(path, value, context or {}, SETTINGS))


@pytest.mark.parametrize(("path", "message"), [
    ("nocolon", "must look like package.module:function"),
    ("no_such_pkg_xyz:run", "cannot import target"),
    ("tests.agents:missing", "cannot import target"),
    ("tests.agents:NOT_CALLABLE", "not a callable"),
])
def test_bad_target_paths_are_refused(path: str, message: str):
    with pytest.raises(TargetError, match=message):
        load_callable(path)


def test_dict_return_is_recorded_in_full():
    out = _run("tests.agents:weather_agent", "What is the weather in Paris?")
    assert out.error is None
    assert out.output == "It is 15 degrees in Paris."
    assert out.outcome == "COMPLETE"
    assert out.tool_calls == [{"name": "weather", "arguments": {"city": "Paris"}}]
    assert out.steps is not None and len(out.steps) == 3
    assert out.cost_usd == pytest.approx(0.001)
    assert out.latency_ms is not None and out.latency_ms >= 0


def test_agent_reported_failure_is_an_outcome_not_an_error():
    out = _run("tests.agents:weather_agent", "What is the weather in Lima?")
    assert out.error is None and out.outcome == "FAILED" and out.output is None


def test_exceptions_are_recorded_with_their_type():
    out = _run("tests.agents:broken", "x")
    assert out.error == "RuntimeError: the agent crashed"
    assert out.error_type == "RuntimeError" and out.attempts == 1


def test_async_targets_and_string_returns():
    out = _run("tests.agents:async_upper", "abc")
    assert (out.output, out.outcome) == ("ABC", "COMPLETE")


def test_timeout_is_recorded():
    slow = Settings(target_timeout_s=0.05)
    out = asyncio.run(call_target("time:sleep", 1, {}, slow))
    assert out.error_type == "TargetTimeout"


def test_non_string_outputs_become_json():
    assert outcome_from_return({"output": {"a": 1}}).output == '{"a": 1}'
    assert outcome_from_return(["x", 2]).output == '["x", 2]'
    with pytest.raises(TargetError):
        outcome_from_return({"output": "x", "tool_calls": [3]})
