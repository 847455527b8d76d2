"""Ingestion of production runs: plain LLM calls, or agents' plans and plan runs.

One validated shape (RunIn) for the Python API, `evalq ingest` and the HTTP endpoint.
Idempotent on (source, external id): sending a run twice stores it once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from scheduler.errors import DatasetFormatError, InputError

DEFAULT_SOURCE = "default"
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
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # naive times are taken as UTC
        return value.astimezone(UTC)  # stored in UTC (SQLite keeps no offset)


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


def to_row(run: RunIn, default_source: str) -> dict[str, Any]:
    """The ProductionRun fields of a run, with Portia plans and plan runs unpacked.
    Raises InputError when a plan or plan run is not in Portia's shape, or a value is not
    representable in JSON (NaN, infinity)."""
    try:
        row = _unpack(run, default_source)
    except (AttributeError, TypeError, KeyError) as exc:
        raise InputError(
            f"invalid run: plan/plan_run are not in Portia's shape ({type(exc).__name__}: "
            f"{exc}); send plan {{\"steps\": [...]}} and plan_run {{\"state\", \"outputs\"}}"
        ) from None
    try:
        json.dumps([row[k] for k in ("input", "output", "plan", "steps", "tool_calls",
                                     "meta")], allow_nan=False)
    except ValueError:
        raise InputError("invalid run: NaN or infinity is not valid JSON") from None
    return row


def _unpack(run: RunIn, default_source: str) -> dict[str, Any]:
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
    return {
        "source": run.source or default_source,
        "external_id": run.id,
        "created_at": run.created_at or datetime.now(UTC),
        "input": run.input if run.input is not None
        else (plan.get("plan_context") or {}).get("query"),
        "output": run.output if run.output is not None else final.get("value"),
        "plan": run.plan,
        "steps": steps,
        "tool_calls": tool_calls,
        "status": run.status or plan_run.get("state"),
        "latency_ms": run.latency_ms,
        "model": run.model,
        "cost_usd": run.cost_usd,
        "meta": meta or None,
    }


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as `field: problem; field: problem`."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "run"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_run(payload: Any) -> RunIn:
    """Validate one run payload (a dict) or raise InputError naming the field."""
    if isinstance(payload, RunIn):
        return payload
    try:
        return RunIn.model_validate(payload)
    except ValidationError as exc:
        raise InputError(f"invalid run: {validation_message(exc)}") from None


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
    before anything is written (InputError otherwise)."""
    rows = [to_row(parse_run(r), source) for r in runs]
    return _insert(rows)


def record_run(run: dict[str, Any] | RunIn, *, source: str = DEFAULT_SOURCE) -> bool:
    """Store one production run; returns False when it was already stored."""
    return record_runs([run], source=source).inserted == 1


def _insert(rows: Sequence[dict[str, Any]]) -> IngestSummary:
    from models.crud import insert_runs
    from models.db import session_scope
    from scheduler.offline import _prepare_database

    summary = IngestSummary()
    if not rows:
        return summary
    _prepare_database()
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        with session_scope() as session:
            new = insert_runs(session=session, rows_in=chunk)
        summary.inserted += new
        summary.duplicates += len(chunk) - new
    return summary


def ingest_file(path: str | Path, *, source: str = DEFAULT_SOURCE,
                max_line_bytes: int = 10 * 1024 * 1024) -> IngestSummary:
    """Ingest a JSONL file of runs: good lines are stored, bad ones reported as FILE:LINE."""
    shown = str(path)
    rows: list[dict[str, Any]] = []
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
            except InputError as exc:
                errors.append(f"{shown}:{lineno}: {exc}")
            except UnicodeDecodeError:
                errors.append(f"{shown}:{lineno}: not valid UTF-8")
            except (RecursionError, ValueError) as exc:  # JSONDecodeError is a ValueError
                errors.append(f"{shown}:{lineno}: invalid JSON: {str(exc)[:160]}")
            if len(content) > max_line_bytes:
                _skip_rest_of_line(stream, raw)
    summary = _insert(rows)
    summary.rejected, summary.errors = len(errors), errors
    return summary


def _skip_rest_of_line(stream: Any, raw: bytes) -> None:
    while raw and not raw.endswith(b"\n"):
        raw = stream.readline(1 << 20)
