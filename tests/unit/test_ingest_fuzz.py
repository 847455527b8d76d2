"""Fuzzing the ingestion parser: any JSON value or bytes give a stored run or a clear
InputError naming the field, never another exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import InputError
from scheduler.runs import parse_run, to_row

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
FIELDS = ["id", "source", "created_at", "input", "output", "plan", "plan_run", "steps",
          "tool_calls", "status", "latency_ms", "model", "cost_usd", "metadata"]
runs = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(payload=runs | json_values)
def test_any_payload_is_a_row_or_an_input_error(payload):
    try:
        row = to_row(parse_run(payload), "default")
    except InputError as exc:
        assert str(exc).startswith("invalid run")
        return
    assert row["external_id"] and row["source"]
    json.dumps({k: row[k] for k in ("input", "output", "plan", "steps", "tool_calls", "meta")},
               allow_nan=False)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_ingest_file_of_arbitrary_bytes_never_crashes(raw, tmp_path_factory, embedded_env):
    from scheduler.runs import IngestSummary, ingest_file

    path = tmp_path_factory.mktemp("fuzz") / "runs.jsonl"
    path.write_bytes(raw)
    try:
        summary = ingest_file(path, max_line_bytes=100)
    except Exception as exc:  # only a database problem may escape, and there is none here
        raise AssertionError(f"ingest_file raised {exc!r}") from exc
    assert isinstance(summary, IngestSummary)
    assert all(e.startswith(f"{path}:") for e in summary.errors)
