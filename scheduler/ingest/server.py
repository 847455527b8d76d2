"""HTTP ingestion of production runs, for producers not written in Python.

`POST /runs` takes one run, a JSON list of runs or `{"runs": [...]}` (the shape of
`scheduler.ingest.records.RunIn`) behind a bearer token; `GET /health` answers without one.
Every error body is JSON `{"error": "..."}`. The token is compared in constant time
and never logged or echoed; the access log never shows a query string.

A 4xx says what to change (422: `runs[INDEX].FIELD: problem`, nothing of the batch
stored); 503 means "retry later" (the database is down, or the server is at its
connection limit); anything else unexpected is a 500 whose log line names the error's
class and where it happened, never the SQL or the values.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from models.errors import StorageError
from models.settings import Settings, get_settings
from models.tables import ProductionRunCreate
from scheduler.errors import InputError, InvalidRun, StoreFailed
from scheduler.experiments.dataset_file import MAX_JSON_DEPTH
from scheduler.ingest.batcher import GroupCommit
from scheduler.ingest.records import DEFAULT_SOURCE, check_source, parse_run, to_row

log = logging.getLogger(__name__)


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
    body_timeout_s: float


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


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes,
    and with 408 when all of it has not arrived within `timeout_s` seconds."""
    too_big = f"body larger than {limit} bytes (EVALQ_INGEST_MAX_BYTES); send smaller batches"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _Refused(413, too_big)
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(timeout_s) as deadline:
        async for chunk in request.stream():  # counted as it arrives: chunked or lying clients
            size += len(chunk)
            if size > limit:
                raise _Refused(413, too_big)
            chunks.append(chunk)
    if deadline.cancelled_caught:
        raise _Refused(408, f"the body did not arrive within {timeout_s:g} s "
                       "(EVALQ_INGEST_BODY_TIMEOUT_S); send it faster or in smaller batches",
                       headers={"Connection": "close"})
    return b"".join(chunks)


class _TooDeep(_Refused):
    """The body's nesting exhausted the parser's recursion limit."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _payload_runs(body: bytes) -> list[Any]:
    """The run payloads of a body: one run, a list of runs, or {"runs": [...]}."""
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise _Refused(400, "body is not UTF-8; send JSON encoded as UTF-8") from None
    except RecursionError:
        raise _TooDeep(400, f"body nested far deeper than {MAX_JSON_DEPTH} levels of arrays "
                       "and objects, the most a run's field may hold") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
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


def _validated(index: int, item: Any, source: str) -> ProductionRunCreate:
    """One run's row (validated, its Portia plan unpacked), or 422 naming index and field."""
    where = f"runs[{index}]"
    try:
        return to_row(parse_run(item), source)
    except InvalidRun as exc:
        raise _Refused(422, exc.where(where), index=index) from None
    except InputError as exc:
        raise _Refused(422, f"{where}: {exc}", index=index) from None


def _rows(body: bytes, source: str, max_batch: int) -> list[ProductionRunCreate]:
    """Parse and validate a body: its rows, or a _Refused (400, 413, 422)."""
    items = _payload_runs(body)
    if len(items) > max_batch:
        raise _Refused(413, f"too many runs: {len(items)} in one request, at most {max_batch} "
                       "(EVALQ_INGEST_MAX_BATCH); split the batch")
    return [_validated(i, item, source) for i, item in enumerate(items)]


async def _ingest(body: bytes, source: str, max_batch: int, writes: GroupCommit
                  ) -> dict[str, int]:
    """Parse, validate and store a body; answered once its rows are committed. A small
    body is parsed on the event loop (a thread hop costs more than parsing it); a large
    one in a worker thread, so the loop keeps serving others."""
    rows = None
    if len(body) <= _INLINE_BYTES:
        try:
            rows = _rows(body, source, max_batch)
        except _TooDeep:  # the loop's stack is deeper than a fresh thread's: parse there
            rows = None
    if rows is None:
        rows = await run_in_threadpool(_rows, body, source, max_batch)
    try:
        summary = await writes.store(rows)
    except StoreFailed as exc:  # its message has no SQL and no values
        if not exc.unavailable:
            log.error("POST /runs: storing %d runs failed: %s", len(rows), exc)
            raise _Refused(500, _INTERNAL) from None
        log.warning("POST /runs: storing %d runs failed: %s", len(rows), exc)
        raise _Refused(503, "the database is unavailable; retry later",
                       headers={"Retry-After": "5"}) from None
    except StorageError as exc:  # e.g. not migrated: a message for the operator, no values
        log.error("POST /runs: %s", exc)
        raise _Refused(500, _INTERNAL) from None
    return {"inserted": summary.inserted, "duplicates": summary.duplicates}


_INLINE_BYTES = 16 * 1024
_INTERNAL = "internal error; the server log has the details"


def _unexpected(exc: BaseException) -> _Refused:
    """A 500 for an error nobody planned for, logged with its class and where it was
    raised: never its message or traceback text, which may quote the SQL or the values."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    log.error("POST /runs: unexpected %s%s (its message is not logged: it may hold the "
              "values sent)", type(exc).__name__, where)
    return _Refused(500, _INTERNAL)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _on_refused(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    extra = dict(exc.extra)
    headers = extra.pop("headers", None)
    return _error(exc.status, exc.message, headers=headers, **extra)


async def _on_http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, headers=exc.headers)


async def _on_crash(_: Request, exc: Exception) -> Response:
    return _error(500, _INTERNAL)


def create_app() -> Starlette:
    """The ingestion app, configured from the settings as they are now."""
    settings = get_settings()
    config = _Config(_token(settings), settings.ingest_max_bytes, settings.ingest_max_batch,
                     settings.ingest_body_timeout_s)
    writes = GroupCommit()  # the rows of concurrent requests go in one transaction

    async def post_runs(request: Request) -> Response:
        if not _authorized(request.headers.get("authorization"), config.token):
            return _error(401, "missing or wrong bearer token: send `Authorization: Bearer "
                          "<EVALQ_INGEST_TOKEN>` (never in the URL)",
                          headers={"WWW-Authenticate": "Bearer"})
        source = request.query_params.get("source", DEFAULT_SOURCE)
        try:
            check_source(source)
        except InvalidRun as exc:
            raise _Refused(400, f"?{exc.where('')}") from None
        body = await _read_body(request, config.max_bytes, config.body_timeout_s)
        try:
            result = await _ingest(body, source, config.max_batch, writes)
        except _Refused:
            raise
        except Exception as exc:  # logged without its message, answered 500
            raise _unexpected(exc) from None
        return JSONResponse(result)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/runs", post_runs, methods=["POST"]), Route("/health", health)],
        exception_handlers={_Refused: _on_refused, HTTPException: _on_http_error,
                            Exception: _on_crash},
    )


class DropQueryString(logging.Filter):
    """Cuts the query string off every request path of a log record (uvicorn's access log
    passes the path with its query as an argument): a secret sent as `?token=...` is
    refused and never written to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(arg.split("?", 1)[0] if isinstance(arg, str) else arg
                                for arg in record.args)
        return True


def _log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with DropQueryString on its access log."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["drop_query_string"] = {
        "()": f"{__name__}.DropQueryString"}
    config["handlers"]["access"].setdefault("filters", []).append("drop_query_string")
    return config


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus what uvicorn lacks: a deadline on the request head.
    A connection that has not sent a complete request head EVALQ_INGEST_HEADER_TIMEOUT_S
    after it connected, or after its previous response, is closed; so connections that
    send nothing, a partial head (slowloris) or a body nobody reads do not pile up."""

    _deadline: asyncio.TimerHandle | None = None
    _cycle_at_arm: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._cycle_at_arm:
            self._disarm()  # a new request head arrived: the app's own limits apply now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._cycle_at_arm = self.cycle
        self._deadline = self.loop.call_later(get_settings().ingest_header_timeout_s,
                                              self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        waiting = self.cycle is None or self.cycle.response_complete  # not mid-request
        if self.cycle is self._cycle_at_arm and waiting and not self.transport.is_closing():
            self.transport.close()


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the ingestion server with uvicorn; refuses to start without a token. Bounded:
    EVALQ_INGEST_MAX_CONNECTIONS at once (503 beyond), a request head within
    EVALQ_INGEST_HEADER_TIMEOUT_S, at most 16 KiB of it (h11's limit; 400 beyond), idle
    keep-alive for EVALQ_INGEST_KEEP_ALIVE_S, the body within EVALQ_INGEST_BODY_TIMEOUT_S."""
    settings = get_settings()
    if _token(settings) is None:
        raise InputError("no ingest token configured: set EVALQ_INGEST_TOKEN to a long random "
                         "secret (e.g. `openssl rand -hex 32`) and start again; producers "
                         "send it as `Authorization: Bearer <token>`")
    # uvicorn's access log shows client, method, path and status: never request headers,
    # and (DropQueryString) never a query string.
    uvicorn.run(create_app(), host=host, port=port, log_level="info", access_log=True,
                log_config=_log_config(), http=_DeadlineProtocol,
                limit_concurrency=settings.ingest_max_connections,
                timeout_keep_alive=settings.ingest_keep_alive_s)
