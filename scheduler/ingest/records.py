"""Ingestion of production runs: plain LLM calls, or agents' plans and plan runs.

One validated shape (RunIn) for the Python API, `evalq ingest` and the HTTP endpoint.
Idempotent on (source, external id): sending a run twice stores it once. Everything the
database cannot store (NUL characters, lone surrogates, NaN, nesting deeper than
MAX_JSON_DEPTH, times it cannot read back) is refused by `parse_run`, before any write,
as an InvalidRun naming the field; a failed write is a StoreFailed without SQL or values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from models.crud import insert_runs
from models.db import session_scope
from models.errors import DatabaseUnavailable
from models.migrate import prepare_database
from models.tables import ProductionRunCreate, utcnow
from scheduler.errors import DatasetFormatError, InputError, InvalidRun, StoreFailed
from scheduler.experiments.dataset_file import (
    MAX_JSON_DEPTH,
    shown_key,
    text_problem,
    unstorable_field,
)

DEFAULT_SOURCE = "default"
MAX_SOURCE_CHARS = 200  # the width of ProductionRun.source
# Times PostgreSQL stores and reads back whatever its session time zone: one day inside
# its year-1 and year-9999 limits, as a time zone's offset moves the shown date by < 1 day.
EARLIEST_TIME = datetime(1, 1, 2, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
_TIME_RANGE = (f"out of range: a time must fall between {EARLIEST_TIME.date()} and "
               f"{LATEST_TIME.date()} (UTC), which the database can store and read back")
_CHUNK = 500


class RunIn(BaseModel):
    """One production run as a producer sends it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    id: str = Field(validation_alias=AliasChoices("id", "external_id", "run_id"),
                    min_length=1, max_length=200,
                    description="The producer's own run id (unique per source).")
    source: str | None = Field(None, min_length=1, max_length=200)
    created_at: datetime | None = None
    input: Any = None
    output: Any = None
    plan: dict[str, Any] | None = None  # a Portia Plan: {"plan_context", "steps": [...]}
    plan_run: dict[str, Any] | None = None  # a Portia PlanRun: {"state", "outputs", ...}
    steps: list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    status: str | None = Field(None, max_length=50)
    latency_ms: float | None = Field(None, ge=0)
    model: str | None = Field(None, max_length=200)
    cost_usd: float | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:  # naive times are taken as UTC; stored in UTC (SQLite keeps no offset)
            utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is in year 0 in UTC
            raise ValueError(_TIME_RANGE) from None
        if not EARLIEST_TIME <= utc <= LATEST_TIME:
            raise ValueError(_TIME_RANGE)
        return utc


def _portia_steps(plan: dict[str, Any], plan_run: dict[str, Any] | None) -> list[dict]:
    outputs = ((plan_run or {}).get("outputs") or {}).get("step_outputs") or {}
    steps = []
    for step in plan.get("steps") or []:
        if not isinstance(step, dict):
            continue
        produced = outputs.get(step.get("output")) if step.get("output") else None
        steps.append({
            "task": step.get("task"), "tool_id": step.get("tool_id"),
            "inputs": step.get("inputs"), "output_name": step.get("output"),
            "output": produced.get("value") if isinstance(produced, dict) else produced,
        })
    return steps


def to_row(run: RunIn, default_source: str) -> ProductionRunCreate:
    """The ProductionRun of a run from `parse_run` (which refused what cannot be
    stored), with Portia plans and plan runs unpacked. Raises InvalidRun when a plan or
    plan run is not in Portia's shape, or the default source cannot be stored."""
    if run.source is None:
        check_source(default_source)
    try:
        return _unpack(run, default_source)
    except (AttributeError, TypeError, KeyError) as exc:
        raise InvalidRun([(
            "plan/plan_run", f"not in Portia's shape ({type(exc).__name__}); send plan "
            "{\"steps\": [...]} and plan_run {\"state\", \"outputs\"}")]) from None


def check_source(source: str) -> None:
    """Refuse a default source the database cannot store (InvalidRun naming `source`)."""
    problem = text_problem(source)
    if problem is None and not 1 <= len(source) <= MAX_SOURCE_CHARS:
        problem = f"must be 1 to {MAX_SOURCE_CHARS} characters"
    if problem is not None:
        raise InvalidRun([("source", problem)])


def _unpack(run: RunIn, default_source: str) -> ProductionRunCreate:
    plan, plan_run = run.plan or {}, run.plan_run or {}
    final = ((plan_run.get("outputs") or {}).get("final_output")) or {}
    steps = run.steps if run.steps is not None else (_portia_steps(plan, plan_run) or None)
    tool_calls = run.tool_calls
    if tool_calls is None and steps and plan:
        tool_calls = [
            {"name": s["tool_id"], "arguments": {} if s.get("inputs") is None else s["inputs"]}
            for s in steps if s.get("tool_id")
        ] or None
    meta = dict(run.metadata or {})
    if plan_run.get("plan_id") or plan.get("id"):
        meta.setdefault("plan_id", plan_run.get("plan_id") or plan.get("id"))
    # Stored as sent: "" stays "" and {} stays {}; only what is missing is filled in.
    # (Validated already: parse_run refused whatever the database cannot store.)
    return ProductionRunCreate.model_construct(
        source=run.source or default_source,
        external_id=run.id,
        created_at=run.created_at or datetime.now(UTC),
        input=run.input if run.input is not None
        else (plan.get("plan_context") or {}).get("query"),
        output=run.output if run.output is not None else final.get("value"),
        plan=run.plan,
        steps=steps,
        tool_calls=tool_calls,
        status=run.status if run.status is not None else plan_run.get("state"),
        latency_ms=run.latency_ms,
        model=run.model,
        cost_usd=run.cost_usd,
        meta=meta if meta or run.metadata is not None else None,
    )


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """A pydantic error as (field, problem) pairs; field names are escaped for printing."""
    problems = []
    for err in exc.errors()[:5]:
        where = "".join(f"[{p}]" if isinstance(p, int) else shown_key(p) for p in err["loc"])
        problems.append((where.removeprefix("."), err["msg"].removeprefix("Value error, ")))
    return problems


def parse_run(payload: Any) -> RunIn:
    """Validate one run payload (a dict, or a RunIn) or raise InvalidRun naming the field.
    Refuses, before anything is written, every value the database cannot store."""
    if isinstance(payload, RunIn):
        fields = [(name, getattr(payload, name)) for name in RunIn.model_fields
                  if name != "created_at"]  # a datetime, checked by its validator
    else:
        fields = list(payload.items()) if isinstance(payload, dict) else []
    found = unstorable_field(fields)  # before pydantic, whose messages are vaguer here
    if found is not None:
        raise InvalidRun([found])
    if isinstance(payload, RunIn):
        return payload
    try:
        return RunIn.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRun(validation_problems(exc)) from None


@dataclass
class IngestSummary:
    """What an ingestion stored."""

    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)  # FILE:LINE: problem, for ingest files

    def as_dict(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "duplicates": self.duplicates,
                "rejected": self.rejected, "errors": self.errors}


def record_runs(runs: Iterable[dict[str, Any] | RunIn], *, source: str = DEFAULT_SOURCE
                ) -> IngestSummary:
    """Store production runs; idempotent on (source, external id). Every run is validated
    before anything is written (InvalidRun otherwise); StoreFailed if the database fails."""
    rows = [to_row(parse_run(r), source) for r in runs]
    return store_rows(rows)


def store_rows(rows: Sequence[ProductionRunCreate]) -> IngestSummary:
    """Store rows made by `to_row(parse_run(...))`, in chunks of _CHUNK (one transaction
    each). A database error is a StoreFailed saying how many runs were stored before it."""
    summary = IngestSummary()
    if not rows:
        return summary
    try:
        prepare_database()
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            with session_scope() as session:
                new = insert_new_runs(session, chunk)
            summary.inserted += new
            summary.duplicates += len(chunk) - new
    except (SQLAlchemyError, DatabaseUnavailable) as exc:
        raise _store_failed(exc, summary) from None
    return summary


def store_groups(groups: Sequence[Sequence[ProductionRunCreate]]) -> list[IngestSummary]:
    """Store several groups of rows (e.g. the bodies of concurrent `POST /runs`) in ONE
    transaction, and say per group how many were new. A run sent by two groups at once
    counts as inserted for the first and as a duplicate for the other. All or nothing:
    a database error (StoreFailed) means no group was stored."""
    summaries = [IngestSummary() for _ in groups]
    try:
        prepare_database()
        with session_scope() as session:
            if session.get_bind().dialect.name == "postgresql":
                rows = [row for group in groups for row in group]
                new = set(_insert_unnest(session, rows))
                for group, summary in zip(groups, summaries, strict=True):
                    for row in group:
                        key = (row.source, row.external_id)
                        if key in new:
                            new.discard(key)
                            summary.inserted += 1
                        else:
                            summary.duplicates += 1
            else:  # SQLite: one statement per group, in the same transaction
                for group, summary in zip(groups, summaries, strict=True):
                    summary.inserted = insert_runs(session=session, rows_in=group) if group else 0
                    summary.duplicates = len(group) - summary.inserted
    except (SQLAlchemyError, DatabaseUnavailable) as exc:
        raise _store_failed(exc, IngestSummary()) from None
    return summaries


def insert_new_runs(session: Session, rows: Sequence[ProductionRunCreate]) -> int:
    """Insert rows, skipping (source, external id) pairs already stored; how many were new.
    On PostgreSQL one `INSERT ... SELECT FROM unnest(arrays)`: a short statement whatever
    the number of rows (a multi-row VALUES costs ~0.7 ms of SQLAlchemy compiling per run)."""
    if not rows:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        return len(_insert_unnest(session, rows))
    return insert_runs(session=session, rows_in=rows)


_JSON_COLUMNS = ("input", "output", "plan", "steps", "tool_calls", "meta")
_INSERT_UNNEST = sa.text("""
INSERT INTO production_run (source, external_id, created_at, input, output, plan, steps,
    tool_calls, status, latency_ms, model, cost_usd, meta, ingested_at)
SELECT u.source, u.external_id, u.created_at, u.input::jsonb, u.output::jsonb,
    u.plan::jsonb, u.steps::jsonb, u.tool_calls::jsonb, u.status, u.latency_ms, u.model,
    u.cost_usd, u.meta::jsonb, :now
FROM unnest(CAST(:source AS text[]), CAST(:external_id AS text[]),
    CAST(:created_at AS timestamptz[]), CAST(:input AS text[]), CAST(:output AS text[]),
    CAST(:plan AS text[]), CAST(:steps AS text[]), CAST(:tool_calls AS text[]),
    CAST(:status AS text[]), CAST(:latency_ms AS float8[]), CAST(:model AS text[]),
    CAST(:cost_usd AS float8[]), CAST(:meta AS text[]))
    AS u(source, external_id, created_at, input, output, plan, steps, tool_calls, status,
         latency_ms, model, cost_usd, meta)
ON CONFLICT (source, external_id) DO NOTHING
RETURNING source, external_id""")


def _insert_unnest(session: Session, rows: Sequence[ProductionRunCreate]
                   ) -> list[tuple[str, str]]:
    """PostgreSQL: insert rows, the keys of those that were new. JSON columns hold what
    SQLAlchemy's JSON type stores (None as JSON null), so rows read back the same."""
    dumps = json.dumps
    params: dict[str, Any] = {"now": utcnow()}
    for column in ("source", "external_id", "created_at", "status", "latency_ms", "model",
                   "cost_usd"):
        params[column] = [getattr(r, column) for r in rows]
    for column in _JSON_COLUMNS:
        params[column] = [dumps(getattr(r, column)) for r in rows]
    result = session.execute(_INSERT_UNNEST, params)
    return [(source, external_id) for source, external_id in result.all()]


def _store_failed(exc: Exception, summary: IngestSummary) -> StoreFailed:
    """The error of a failed write: its class and SQLSTATE, never its SQL or values.
    Unavailable: the database could not be reached or could not work for now (PEP 249's
    OperationalError and InterfaceError: connection lost, disk full, read-only, ...)."""
    unavailable = isinstance(exc, DatabaseUnavailable | DisconnectionError | PoolTimeout
                             | OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None)
    kind = f"{type(orig).__name__}{f', SQLSTATE {code}' if code else ''}"
    stored = summary.inserted + summary.duplicates
    done = (f"the first {stored} runs were stored (sending them again is harmless)" if stored
            else "nothing was stored")
    if unavailable:
        return StoreFailed(f"the database is unavailable ({kind}); {done}; retry later",
                           unavailable=True)
    return StoreFailed(f"the database refused the runs ({kind}); {done}. evalq validates "
                       "runs before writing them, so this is a bug: please report it with "
                       "this message", unavailable=False)


def ingest_file(path: str | Path, *, source: str = DEFAULT_SOURCE,
                max_line_bytes: int = 10 * 1024 * 1024) -> IngestSummary:
    """Ingest a JSONL file of runs: good lines are stored, bad ones reported as
    `FILE:LINE: field: problem` (nothing of a bad line is stored)."""
    shown = str(path)
    if text_problem(shown):  # a file name of undecodable bytes: printed escaped
        shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        check_source(source)
    except InvalidRun as exc:
        raise InputError(f"--source {exc.problems[0][1]}") from None
    rows: list[ProductionRunCreate] = []
    errors: list[str] = []
    try:
        stream = Path(path).open("rb")
    except OSError as exc:
        raise DatasetFormatError(shown, None, f"cannot read the file: {exc.strerror}") from None
    with stream:
        for lineno, raw in enumerate(iter(lambda: stream.readline(max_line_bytes + 2), b""), 1):
            content = raw.rstrip(b"\r\n")
            if not content.strip():
                continue
            try:
                if len(content) > max_line_bytes:
                    raise InputError(f"line longer than {max_line_bytes} bytes")
                payload = json.loads(content.decode("utf-8"))
                rows.append(to_row(parse_run(payload), source))
            except InvalidRun as exc:
                errors.append(f"{shown}:{lineno}: {exc.where('')}")
            except InputError as exc:
                errors.append(f"{shown}:{lineno}: {exc}")
            except UnicodeDecodeError:
                errors.append(f"{shown}:{lineno}: not valid UTF-8")
            except RecursionError:
                errors.append(f"{shown}:{lineno}: nested far deeper than {MAX_JSON_DEPTH} "
                              "levels of arrays and objects, the most a field may hold")
            except ValueError as exc:  # JSONDecodeError is a ValueError
                errors.append(f"{shown}:{lineno}: invalid JSON: {str(exc)[:160]}")
            if len(content) > max_line_bytes:
                _skip_rest_of_line(stream, raw)
    summary = store_rows(rows)
    summary.rejected, summary.errors = len(errors), errors
    return summary


def _skip_rest_of_line(stream: Any, raw: bytes) -> None:
    while raw and not raw.endswith(b"\n"):
        raw = stream.readline(1 << 20)
