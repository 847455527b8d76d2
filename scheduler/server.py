"""HTTP ingestion of production runs, for producers not written in Python.

`POST /runs` takes one run, a JSON list of runs or `{"runs": [...]}` (the shape of
`scheduler.runs.RunIn`) behind a bearer token; `GET /health` answers without one.
Every error body is JSON `{"error": "..."}`. The token is compared in constant time
and never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from models.errors import StorageError
from models.settings import Settings, get_settings
from scheduler.errors import InputError
from scheduler.runs import DEFAULT_SOURCE, RunIn, parse_run, record_runs, to_row

log = logging.getLogger(__name__)
_MAX_SOURCE = 200  # ProductionRun.source is VARCHAR(200)


class _Refused(Exception):
    """A request refused with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class _Config:
    """What the app needs from the settings, read once at creation."""

    token: bytes | None
    max_bytes: int
    max_batch: int


def _token(settings: Settings) -> bytes | None:
    secret = settings.ingest_token.get_secret_value() if settings.ingest_token else ""
    return secret.encode("utf-8") or None


def _authorized(header: str | None, token: bytes | None) -> bool:
    """True when `header` is `Bearer <token>` (constant-time comparison)."""
    if token is None or not header:
        return False
    scheme, _, given = header.partition(" ")
    # Starlette decodes headers as latin-1: encoding back gives the bytes that were sent.
    given_bytes = given.strip().encode("latin-1", errors="replace")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    too_big = f"body larger than {limit} bytes (EVALQ_INGEST_MAX_BYTES); send smaller batches"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _Refused(413, too_big)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # counted as it arrives: chunked or lying clients
        size += len(chunk)
        if size > limit:
            raise _Refused(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _payload_runs(body: bytes) -> list[Any]:
    """The run payloads of a body: one run, a list of runs, or {"runs": [...]}."""
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise _Refused(400, "body is not UTF-8; send JSON encoded as UTF-8") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _Refused(400, f"body is not valid JSON: {str(exc)[:160]}") from None
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        raise _Refused(400, "body must be a run object, a list of runs or {\"runs\": [...]}")
    if "runs" not in payload:
        return [payload]
    if set(payload) != {"runs"} or not isinstance(payload["runs"], list):
        raise _Refused(400, "{\"runs\": [...]} must hold a list of runs and no other key")
    return payload["runs"]


def _validated(index: int, item: Any, source: str) -> RunIn:
    """One run validated (and its Portia plan unpacked once), or 422 naming its index."""
    try:
        run = parse_run(item)
        to_row(run, source)  # a malformed plan/plan_run must fail here, not mid-insert
    except InputError as exc:
        raise _Refused(422, str(exc), index=index) from None
    except (AttributeError, TypeError):
        raise _Refused(422, "invalid run: plan, plan_run or steps: not the expected shape "
                       "(objects and lists as in a Portia Plan and PlanRun)", index=index) from None
    return run


def _ingest(body: bytes, source: str, max_batch: int) -> dict[str, int]:
    """Parse, validate and store a body (blocking: run in a worker thread)."""
    items = _payload_runs(body)
    if len(items) > max_batch:
        raise _Refused(413, f"too many runs: {len(items)} in one request, at most {max_batch} "
                       "(EVALQ_INGEST_MAX_BATCH); split the batch")
    runs = [_validated(i, item, source) for i, item in enumerate(items)]
    try:
        summary = record_runs(runs, source=source)
    except InputError as exc:
        raise _Refused(422, str(exc)) from None
    except (SQLAlchemyError, StorageError) as exc:
        first_line = (str(exc).splitlines() or [""])[0][:300]  # not the SQL and its values
        log.error("storing %d runs failed: %s: %s", len(runs), type(exc).__name__, first_line)
        raise _Refused(503, "the database is unavailable; retry later") from None
    return {"inserted": summary.inserted, "duplicates": summary.duplicates}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _on_refused(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return _error(exc.status, exc.message, **exc.extra)


async def _on_http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, headers=exc.headers)


async def _on_crash(_: Request, exc: Exception) -> Response:
    return _error(500, "internal error; the server log has the details")


def create_app() -> Starlette:
    """The ingestion app, configured from the settings as they are now."""
    settings = get_settings()
    config = _Config(_token(settings), settings.ingest_max_bytes, settings.ingest_max_batch)

    async def post_runs(request: Request) -> Response:
        if not _authorized(request.headers.get("authorization"), config.token):
            return _error(401, "missing or wrong bearer token: send `Authorization: Bearer "
                          "<EVALQ_INGEST_TOKEN>`", headers={"WWW-Authenticate": "Bearer"})
        source = request.query_params.get("source", DEFAULT_SOURCE)
        if not 1 <= len(source) <= _MAX_SOURCE:
            raise _Refused(400, f"source must be 1 to {_MAX_SOURCE} characters")
        body = await _read_body(request, config.max_bytes)
        result = await run_in_threadpool(_ingest, body, source, config.max_batch)
        return JSONResponse(result)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/runs", post_runs, methods=["POST"]), Route("/health", health)],
        exception_handlers={_Refused: _on_refused, HTTPException: _on_http_error,
                            Exception: _on_crash},
    )


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the ingestion server with uvicorn; refuses to start without a token."""
    if _token(get_settings()) is None:
        raise InputError("no ingest token configured: set EVALQ_INGEST_TOKEN to a long random "
                         "secret (e.g. `openssl rand -hex 32`) and start again; producers "
                         "send it as `Authorization: Bearer <token>`")
    import uvicorn

    # uvicorn's access log shows client, method, path and status: never request headers.
    uvicorn.run(create_app(), host=host, port=port, log_level="info", access_log=True)
