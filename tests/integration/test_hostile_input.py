"""Hostile input on PostgreSQL: text and values PostgreSQL cannot store (NUL characters,
lone surrogates, deep nesting, extreme times) are refused at validation, naming where
they are, and nothing else ever answers 5xx while the database is up.

`POST /runs` goes to a real `serve()` subprocess; `evalq ingest` and `evalq run` go
through the CLI runner; every database is a fresh PostgreSQL database of the test's own.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scheduler.cli.main import app
from scheduler.experiments.dataset_file import MAX_JSON_DEPTH
from tests.factories import write_jsonl
from tests.integration.test_server import TOKEN, Server
from tests.support import EnvPatch

runner = CliRunner()
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)  # the documented range of created_at
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
SECRET = "do-not-print-this-value"


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        cursor = conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def pg_server(own_pg_url: str, tmp_path: Path) -> Iterator[Server]:
    """A `serve()` subprocess on a fresh PostgreSQL database; its whole log is checked
    for the token afterwards."""
    server = Server({"EVALQ_DATABASE_URL": own_pg_url, "EVALQ_INGEST_TOKEN": TOKEN},
                    tmp_path / "server.log")
    yield server
    server.stop()
    assert TOKEN not in server.output()


# --- an independent oracle: what PostgreSQL cannot store ------------------------------------


def _bad_text(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _bad_json(value: Any, depth: int = 1) -> bool:
    if isinstance(value, str):
        return _bad_text(value)
    if isinstance(value, dict | list):
        if depth > MAX_JSON_DEPTH:
            return True
        keys = list(value) if isinstance(value, dict) else []
        children = list(value.values()) if isinstance(value, dict) else value
        return any(_bad_text(k) for k in keys) or any(_bad_json(c, depth + 1) for c in children)
    return False


def _bad_time(text: str) -> bool:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return not EARLIEST <= parsed.astimezone(UTC) <= LATEST
    except OverflowError:
        return True


def hostile_fields(run: dict[str, Any]) -> set[str]:
    """The fields of a decoded run that the database cannot store."""
    bad = {name for name, value in run.items() if name != "created_at" and _bad_json(value)}
    if "created_at" in run and _bad_time(run["created_at"]):
        bad.add("created_at")
    return bad


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(
        value, list) else []
    return any(_non_finite(c) for c in children)


# --- strategies -----------------------------------------------------------------------------

HOSTILE = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d"]
clean = st.text(max_size=8)
text = clean | clean | clean | st.lists(st.characters() | st.sampled_from(HOSTILE),
                                        min_size=1, max_size=8).map("".join)


def nested(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
deep = st.builds(nested, st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2), json_values)
values = json_values | json_values | json_values | deep
offsets = st.none() | st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda m: timezone(timedelta(minutes=m)))
times = st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(),
                  st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31,
                                                                               23, 59, 59)),
                  offsets) | st.sampled_from([
                      "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                      "0001-01-02T00:00:00Z", "9999-12-30T23:59:59.999999Z",
                      "0001-01-01T23:59:59.999999Z"])
run_fields = st.fixed_dictionaries({}, optional={
    "source": text.map("s".__add__),
    "created_at": times,
    "input": values, "output": values, "metadata": st.dictionaries(text, values, max_size=3),
    "steps": st.lists(values, max_size=3),
    "tool_calls": st.lists(st.dictionaries(text, values, max_size=2), max_size=2),
    "status": text, "model": text,
    "latency_ms": st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    "cost_usd": st.floats(min_value=0, allow_nan=False, allow_infinity=False),
})
batches = st.lists(st.tuples(text, run_fields), min_size=1, max_size=4)
# A URL carries bytes: a lone surrogate cannot be sent in ?source= (NUL can, as %00).
query_text = text.map(lambda s: "q" + "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF))


def _decimal_json(text_or_none: str | None) -> Any:
    return None if text_or_none is None else json.loads(
        text_or_none, parse_float=Decimal, parse_int=Decimal)


def _reported_field(error: str, index: int) -> str:
    match = re.match(rf"runs\[{index}\]\.([A-Za-z_]+)", error)
    assert match, error
    return match.group(1)


def _check_stored(url: str, prefix: str, sent: list[dict[str, Any]], default: str) -> None:
    """Every run of the batch is stored exactly as sent (numbers compared as decimals:
    PostgreSQL's jsonb keeps 1e300 as 1000...0, the same number)."""
    rows = _query(url, "SELECT external_id, source, created_at, input::text, output::text, "
                  "steps::text, tool_calls::text, status, latency_ms, model, cost_usd, "
                  "meta::text FROM production_run WHERE starts_with(external_id, %s)", prefix)
    by_id = {row[0]: row for row in rows}
    assert len(rows) == len(sent)
    for run in sent:
        (_, source, created_at, input_, output, steps, tool_calls, status, latency, model,
         cost, meta) = by_id[run["id"]]
        assert source == run.get("source", default)
        if "created_at" in run:
            expected = datetime.fromisoformat(run["created_at"])
            assert created_at == (expected if expected.tzinfo else expected.replace(
                tzinfo=UTC))
        for got, field in ((input_, "input"), (output, "output"), (steps, "steps"),
                           (tool_calls, "tool_calls")):
            assert _decimal_json(got) == run.get(field), field
        assert _decimal_json(meta) == run.get("metadata")
        assert (status, model) == (run.get("status"), run.get("model"))
        for got, field in ((latency, "latency_ms"), (cost, "cost_usd")):
            assert got == (None if run.get(field) is None else float(run[field]))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches, shape=st.sampled_from(["list", "runs", "single"]),
       source=st.none() | query_text)
def test_fuzz_post_runs_stores_exactly_or_refuses_naming_index_and_field(
        pg_server: Server, own_pg_url: str, batch: list[tuple[str, dict[str, Any]]],
        shape: str, source: str | None) -> None:
    prefix = f"{uuid.uuid4().hex}-"
    runs = [{"id": f"{prefix}{i}{suffix}", **fields} for i, (suffix, fields) in
            enumerate(batch)]
    payload: Any = runs if shape == "list" else {"runs": runs}
    if shape == "single":
        payload = runs[0]
        runs = runs[:1]
    body = json.dumps(payload)  # lone surrogates become \udXXX escapes, NaN stays NaN
    params = {} if source is None else {"source": source}

    response = pg_server.post(content=body.encode(), params=params,
                              headers={"Authorization": f"Bearer {TOKEN}",
                                       "Content-Type": "application/json"})

    assert response.status_code < 500, response.text  # the database is up
    event(f"HTTP {response.status_code}")
    decoded = json.loads(body, parse_float=Decimal, parse_int=Decimal)
    sent = [decoded] if shape == "single" else decoded if shape == "list" else decoded["runs"]
    query_bad = source is not None and _bad_text(source)
    plain = json.loads(body)
    plain_runs = [plain] if shape == "single" else plain if shape == "list" else plain["runs"]
    bad = [hostile_fields(r) for r in plain_runs]
    if _non_finite(runs) or query_bad:
        assert response.status_code == 400, response.text
    elif any(bad):
        index = next(i for i, fields in enumerate(bad) if fields)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert response.json()["index"] == index
        assert _reported_field(error, index) in bad[index], error
        event(f"refused for {_reported_field(error, index)}")
    else:
        assert response.status_code == 200, response.text
        assert response.json() == {"inserted": len(sent), "duplicates": 0}
        _check_stored(own_pg_url, prefix, sent, source or "default")
        return
    assert _query(own_pg_url, "SELECT count(*) FROM production_run WHERE "
                  "starts_with(external_id, %s)", prefix) == [(0,)]


@pytest.mark.parametrize("bad_run, field, words", [
    (r'{"id": "bad-2", "output": "a\u0000b"}', "output",
     ["NUL character (\\u0000)", "cannot store"]),
    (r'{"id": "bad-2", "metadata": {"user\ud800": "x"}}', "metadata",
     ["object key", "lone surrogate"]),
    ('{"id": "bad-2", "input": ' + "[" * 980 + "]" * 980 + "}", "input", ["deeper than 64"]),
    ('{"id": "bad-2", "created_at": "0001-01-01T00:00:00+14:00"}', "created_at",
     ["out of range"]),
    (r'{"id": "bad-2", "status": "\udfff"}', "status", ["lone surrogate (\\udfff)"]),
])
def test_the_issues_cases_are_422_naming_index_and_field(
        pg_server: Server, own_pg_url: str, bad_run: str, field: str,
        words: list[str]) -> None:
    body = '{"runs": [{"id": "ok-0"}, {"id": "ok-1"}, ' + bad_run + ', {"id": "ok-3"}]}'
    response = pg_server.post(content=body.encode(),
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 422, response.text
    assert response.json()["index"] == 2
    assert response.json()["error"].startswith(f"runs[2].{field}")
    for word in words:
        assert word in response.json()["error"]
    assert _query(own_pg_url, "SELECT count(*) FROM production_run") == [(0,)]


def test_a_nul_in_the_source_parameter_is_400(pg_server: Server, own_pg_url: str) -> None:
    response = pg_server.post({"id": "s"}, params={"source": "a\x00"})
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]
    assert _query(own_pg_url, "SELECT count(*) FROM production_run") == [(0,)]


def test_503_means_the_database_is_down_and_the_batch_is_stored_once_it_is_back(
        pg_server: Server, own_pg_url: str) -> None:
    name = own_pg_url.rsplit("/", 1)[1]
    admin = own_pg_url.rsplit("/", 1)[0] + "/postgres"
    assert pg_server.post({"id": "before"}).status_code == 200
    _query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    _query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
           "WHERE datname = %s", name)
    try:
        down = pg_server.post([{"id": "during", "input": SECRET}])
        assert down.status_code == 503, down.text
        assert down.json() == {"error": "the database is unavailable; retry later"}
        assert down.headers["retry-after"] == "5"
    finally:
        _query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    again = pg_server.post([{"id": "during", "input": SECRET}])
    assert again.json() == {"inserted": 1, "duplicates": 0}
    log = pg_server.output()
    assert "database is unavailable (OperationalError" in log
    assert SECRET not in log and "INSERT" not in log


def test_an_unexpected_database_error_is_a_500_logged_without_sql_or_values(
        pg_server: Server, own_pg_url: str) -> None:
    _query(own_pg_url, """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused %', NEW.input; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON production_run
        FOR EACH ROW EXECUTE FUNCTION refuse();""")
    response = pg_server.post([{"id": "t-1", "input": SECRET}])
    assert response.status_code == 500
    assert response.json() == {"error": "internal error; the server log has the details"}
    log = pg_server.output()
    assert "the database refused the runs (RaiseException, SQLSTATE P0001)" in log
    assert SECRET not in log and "INSERT" not in log and "Traceback" not in log


# --- dataset lines on PostgreSQL ------------------------------------------------------------

case_fields = st.fixed_dictionaries({"input": values.filter(lambda v: v is not None)}, optional={
    "expected": values, "metadata": st.dictionaries(text, values, max_size=3),
    "id": text})


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases=st.lists(case_fields, min_size=1, max_size=4))
def test_fuzz_dataset_lines_are_stored_exactly_or_refused_naming_line_and_field(
        own_pg_url: str, tmp_path_factory: pytest.TempPathFactory,
        cases: list[dict[str, Any]]) -> None:
    from models.crud import get_or_create_dataset
    from models.db import session_scope
    from scheduler.errors import DatasetFormatError
    from scheduler.experiments.dataset_file import load_dataset_file

    for i, case in enumerate(cases):  # unique ids: duplicates are another test's subject
        case["id"] = f"{i}-{case.get('id', '')}"
    path = write_jsonl(tmp_path_factory.mktemp("ds") / "cases.jsonl", cases)
    decoded = [json.loads(line) for line in path.read_text().splitlines()]
    bad = [hostile_fields(case) for case in decoded]
    try:
        parsed = load_dataset_file(path, max_line_bytes=1 << 20, name=uuid.uuid4().hex)
    except DatasetFormatError as exc:
        event("refused")
        line = next(i for i, fields in enumerate(bad, 1) if fields)
        assert str(exc).startswith(f"{path}:{line}: "), str(exc)
        field = re.match(r"[a-z_]+", str(exc)[len(f"{path}:{line}: "):])
        assert field and field[0] in bad[line - 1], str(exc)
        str(exc).encode("ascii")  # the hostile text itself is never printed
        return
    assert not any(bad), bad
    event("stored")
    with EnvPatch(EVALQ_DATABASE_URL=own_pg_url), session_scope() as session:
        dataset, _ = get_or_create_dataset(session=session, name=parsed.name,
                                           version=parsed.version, source=parsed.source,
                                           items=parsed.items)
        dataset_id = dataset.id
    rows = _query(own_pg_url, "SELECT key, input::text, expected::text, meta::text "
                  "FROM dataset_item WHERE dataset_id = %s ORDER BY position", dataset_id)
    exact = [json.loads(line, parse_float=Decimal, parse_int=Decimal)
             for line in path.read_text().splitlines()]
    assert [(key, _decimal_json(i), _decimal_json(e), _decimal_json(m))
            for key, i, e, m in rows] == [
        (c["id"], c["input"], c.get("expected"), c.get("metadata")) for c in exact]


# --- the CLI --------------------------------------------------------------------------------


def _leaks(output: str) -> list[str]:
    return [word for word in (SECRET, "INSERT", "[SQL", "parameters", "Traceback")
            if word in output]


def test_ingest_keeps_the_good_lines_around_a_nul_line(own_pg_url: str, tmp_path: Path):
    path = write_jsonl(tmp_path / "runs.jsonl", [
        {"id": "good-1", "output": "a"},
        {"id": "bad-2", "input": SECRET + "\x00"},
        {"id": "good-3", "output": "c"},
        {"id": "bad-4", "created_at": "0001-01-01T00:00:00+14:00", "input": SECRET},
        {"id": "bad-5", "input": nested(200, SECRET)},
        {"id": "good-6", "metadata": {"k": "\ud83d\ude00"}},  # a valid pair: one emoji
    ])
    with EnvPatch(EVALQ_DATABASE_URL=own_pg_url):
        result = runner.invoke(app, ["ingest", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:2: input: contains a NUL character" in result.stderr
    assert f"{path}:4: created_at: out of range" in result.stderr
    assert f"{path}:5: input" in result.stderr and "deeper than 64" in result.stderr
    assert "3 runs stored, 0 already stored, 3 rejected" in result.stdout
    assert not _leaks(result.stdout + result.stderr)
    rows = _query(own_pg_url, "SELECT external_id, meta::text FROM production_run "
                  "ORDER BY external_id")
    assert [r[0] for r in rows] == ["good-1", "good-3", "good-6"]
    assert json.loads(rows[2][1]) == {"k": "\U0001f600"}


def test_run_refuses_a_surrogate_on_line_3_and_writes_nothing(own_pg_url: str,
                                                              tmp_path: Path):
    path = write_jsonl(tmp_path / "cases.jsonl", [
        {"input": "a", "expected": "a"}, {"input": "b", "expected": "b"},
        '{"input": "c", "expected": {"answer": "' + SECRET + '\\ud800"}}',
        {"input": "d", "expected": "d"}])
    with EnvPatch(EVALQ_DATABASE_URL=own_pg_url):
        result = runner.invoke(app, ["run", str(path), "--model", "evalq/toy"])
    assert result.exit_code == 2, result.output
    assert f"{path}:3: expected.answer: contains a lone surrogate (\\ud800)" in result.stderr
    assert not _leaks(result.stdout + result.stderr)
    for table in ("dataset", "dataset_item", "experiment", "result"):
        assert _query(own_pg_url, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_run_refuses_a_nul_line_on_postgresql(own_pg_url: str, tmp_path: Path):
    path = write_jsonl(tmp_path / "cases.jsonl", [
        {"input": "a", "expected": "a"}, {"input": SECRET + "\x00", "expected": "b"}])
    with EnvPatch(EVALQ_DATABASE_URL=own_pg_url):
        result = runner.invoke(app, ["run", str(path), "--model", "evalq/toy"])
    assert result.exit_code == 2, result.output
    assert f"{path}:2: input: contains a NUL character" in result.stderr
    assert not _leaks(result.stdout + result.stderr)
    assert _query(own_pg_url, "SELECT count(*) FROM dataset") == [(0,)]
