"""Fuzzing the ingestion parser: any JSON value or bytes give a storable row or an
InvalidRun naming the field, never another exception. Hostile values (NUL characters,
lone surrogates, NaN, deep nesting, times PostgreSQL cannot read back) are refused here,
before any write; tests/integration/test_hostile_input.py checks the same on PostgreSQL."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import InputError, InvalidRun
from scheduler.experiments.dataset_file import MAX_JSON_DEPTH
from scheduler.ingest.records import EARLIEST_TIME, LATEST_TIME, parse_run, to_row

HOSTILE_CHARS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff"]
hostile_text = st.lists(st.characters() | st.sampled_from(HOSTILE_CHARS), max_size=8).map(
    "".join)


def nested(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20) | hostile_text,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | hostile_text, inner, max_size=4),
    max_leaves=20,
) | st.builds(nested, st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2), st.just("x"))
times = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat) | \
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                     "0001-01-02T00:00:00Z", "9999-12-30T23:59:59.999999Z"])
FIELDS = ["id", "source", "created_at", "input", "output", "plan", "plan_run", "steps",
          "tool_calls", "status", "latency_ms", "model", "cost_usd", "metadata"]
runs = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6) | hostile_text,
                       json_values | times, max_size=8)


def assert_storable(value: Any, depth: int = 1) -> None:
    """What PostgreSQL's text and JSONB take: no NUL, valid Unicode, finite numbers."""
    if isinstance(value, str):
        assert "\x00" not in value
        value.encode("utf-8")
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict | list):
        assert depth <= MAX_JSON_DEPTH
        for key in value if isinstance(value, dict) else ():
            assert_storable(key)
        for child in value.values() if isinstance(value, dict) else value:
            assert_storable(child, depth + 1)


@settings(max_examples=400, deadline=None)
@given(payload=runs | json_values)
def test_any_payload_is_a_storable_row_or_an_invalid_run(payload):
    try:
        row = to_row(parse_run(payload), "default")
    except InvalidRun as exc:
        message = str(exc)
        assert message.startswith("invalid run")
        assert exc.problems and all(problem for _, problem in exc.problems)
        message.encode("ascii")  # hostile text is named and escaped, never copied
        return
    assert row.external_id and row.source
    for key in ("source", "external_id", "status", "model", "input", "output", "plan",
                "steps", "tool_calls", "meta"):
        assert_storable(getattr(row, key))
    assert EARLIEST_TIME <= row.created_at <= LATEST_TIME
    json.dumps({k: getattr(row, k) for k in ("input", "output", "plan", "steps", "tool_calls",
                                             "meta")}, allow_nan=False)


@pytest.mark.parametrize("run, field, words", [
    ({"id": "a", "output": [1, {"text": "x\x00"}]}, "output[1].text", ["NUL", "\\u0000"]),
    ({"id": "a", "input": "\ud800"}, "input", ["lone surrogate", "\\ud800"]),
    ({"id": "a\udfff"}, "id", ["lone surrogate"]),
    ({"id": "a", "metadata": {"user": {"k\x00": 1}}}, "metadata.user", ["object key", "NUL"]),
    ({"id": "a", "metadata": {"a b": "\x00"}}, 'metadata["a b"]', ["NUL"]),
    ({"id": "a", "status": "ok\x00"}, "status", ["NUL"]),
    ({"id": "a", "steps": [nested(MAX_JSON_DEPTH, 1)]}, "steps[0]", ["deeper than 64"]),
    ({"id": "a", "input": float("inf")}, "input", ["infinity"]),
    ({"id": "a", "created_at": "0001-01-01T00:00:00+14:00"}, "created_at", ["out of range"]),
    ({"id": "a", "created_at": "9999-12-31T00:00:00Z"}, "created_at", ["out of range"]),
    ({"id": "a", "created_at": "0001-01-01T23:59:59Z"}, "created_at", ["0001-01-02"]),
    ({"id": "a", "k\ud800": 1}, "", ["a field name", "lone surrogate"]),
    ({"id": "a", "source": "s\x00"}, "source", ["NUL"]),
])
def test_hostile_values_name_their_field(run: dict[str, Any], field: str, words: list[str]):
    with pytest.raises(InvalidRun) as info:
        to_row(parse_run(run), "default")
    [(where, problem)] = info.value.problems
    assert where == field or (where.startswith(field) and "deeper" in problem)
    for word in words:
        assert word in problem
    assert info.value.where("runs[3]").startswith(f"runs[3].{field}" if field else "runs[3]: ")


@pytest.mark.parametrize("created_at, stored", [
    ("0001-01-02T00:00:00Z", datetime(1, 1, 2, tzinfo=UTC)),
    ("0001-01-02T13:00:00+13:00", datetime(1, 1, 2, tzinfo=UTC)),
    ("9999-12-30T23:59:59.999999", datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2026-03-01T12:00:00-05:00", datetime(2026, 3, 1, 17, tzinfo=UTC)),
])
def test_times_inside_the_range_are_kept_in_utc(created_at: str, stored: datetime):
    assert to_row(parse_run({"id": "a", "created_at": created_at}), "s").created_at == stored


def test_a_depth_of_exactly_the_limit_is_stored():
    value = nested(MAX_JSON_DEPTH, "leaf")
    assert to_row(parse_run({"id": "a", "input": value}), "s").input == value


def test_runs_given_as_runin_objects_are_checked_too():
    from scheduler.ingest.records import RunIn, record_runs

    with pytest.raises(InvalidRun, match="output: contains a NUL"):
        record_runs([RunIn(id="a", output="x\x00")])
    with pytest.raises(InvalidRun, match="source"):
        record_runs([{"id": "a"}], source="s\x00")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_ingest_file_of_arbitrary_bytes_never_crashes(raw, tmp_path_factory, embedded_env):
    from scheduler.ingest.records import IngestSummary, ingest_file

    path = tmp_path_factory.mktemp("fuzz") / "runs.jsonl"
    path.write_bytes(raw)
    try:
        summary = ingest_file(path, max_line_bytes=100)
    except Exception as exc:  # only a database problem may escape, and there is none here
        raise AssertionError(f"ingest_file raised {exc!r}") from exc
    assert isinstance(summary, IngestSummary)
    assert all(e.startswith(f"{path}:") for e in summary.errors)


def test_a_bad_source_option_is_an_input_error(embedded_env, tmp_path):
    from scheduler.ingest.records import ingest_file

    path = tmp_path / "runs.jsonl"
    path.write_text('{"id": "a"}\n')
    with pytest.raises(InputError, match="--source must be 1 to 200"):
        ingest_file(path, source="x" * 201)
