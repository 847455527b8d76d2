"""The HTTP ingestion server, run for real: `serve()` in a subprocess, reached with httpx.

The server and this test process share the `embedded_env` SQLite file, so what the
server stored is read back here through models.db.
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from models.db import session_scope
from models.settings import reset_settings
from models.tables import ProductionRun
from scheduler.errors import InputError
from tests.support import REPO, EnvPatch, free_port

TOKEN = f"evalq-test-ingest-{secrets.token_hex(16)}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PORTIA_RUN = {
    "id": "pr-1",
    "plan": {"plan_context": {"query": "q"},
             "steps": [{"task": "t", "tool_id": "search", "inputs": [], "output": "$a"}]},
    "plan_run": {"state": "COMPLETE",
                 "outputs": {"step_outputs": {"$a": {"value": "x"}},
                             "final_output": {"value": "done"}}},
}


class Server:
    """A `serve()` subprocess on a free port, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        code = f"from scheduler.ingest.server import serve; serve(port={self.port})"
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                                            env={**os.environ, **env}, stdout=out,
                                            stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, trust_env=False, timeout=30)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.output()[-3000:]}")

    def post(self, body: Any = None, *, headers: dict[str, str] | None = None,
             **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.client.post("/runs", headers=AUTH if headers is None else headers, **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_server(embedded_env: EnvPatch, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on the test's SQLite file (extra EVALQ_* vars as keywords); each is
    stopped afterwards and its whole output checked for the token."""
    servers: list[Server] = []

    def start(**env: str) -> Server:
        env = {"EVALQ_DATABASE_URL": os.environ["EVALQ_DATABASE_URL"],
               "EVALQ_INGEST_TOKEN": TOKEN, **env}
        servers.append(Server(env, tmp_path / f"server-{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
        assert TOKEN not in server.output()


def stored() -> list[ProductionRun]:
    with session_scope() as session:
        return list(session.exec(select(ProductionRun).order_by(col(ProductionRun.id))).all())


def test_single_run_is_stored_once(start_server: Callable[..., Server]) -> None:
    server = start_server()
    run = {"id": "r-1", "input": "hi", "output": "hello", "latency_ms": 12.5}

    first = server.post(run)
    assert (first.status_code, first.json()) == (200, {"inserted": 1, "duplicates": 0})
    again = server.post(run)
    assert (again.status_code, again.json()) == (200, {"inserted": 0, "duplicates": 1})

    [row] = stored()
    assert (row.source, row.external_id, row.input, row.output, row.latency_ms) == (
        "default", "r-1", "hi", "hello", 12.5)
    assert "POST /runs" in server.output()  # the access log is on (and shows no token)


def test_batch_with_source_query_parameter(start_server: Callable[..., Server]) -> None:
    server = start_server()
    runs = [{"id": f"b-{i}", "input": i} for i in range(3)]

    response = server.post({"runs": runs}, params={"source": "checkout"})

    assert response.json() == {"inserted": 3, "duplicates": 0}
    assert [(r.source, r.external_id) for r in stored()] == [
        ("checkout", "b-0"), ("checkout", "b-1"), ("checkout", "b-2")]


def test_run_source_field_wins_over_query(start_server: Callable[..., Server]) -> None:
    server = start_server()
    response = server.post([{"id": "s-1", "source": "own"}, {"id": "s-2"}],
                           params={"source": "query"})
    assert response.status_code == 200
    assert [r.source for r in stored()] == ["own", "query"]


def test_portia_run_is_unpacked(start_server: Callable[..., Server]) -> None:
    server = start_server()
    assert server.post(PORTIA_RUN).json() == {"inserted": 1, "duplicates": 0}

    [row] = stored()
    assert (row.external_id, row.input, row.output, row.status) == (
        "pr-1", "q", "done", "COMPLETE")
    assert [call["name"] for call in row.tool_calls or []] == ["search"]
    assert row.steps and row.steps[0]["output"] == "x"


def test_missing_or_wrong_token_is_401(start_server: Callable[..., Server]) -> None:
    server = start_server()
    attempts = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}]
    for headers in attempts:
        response = server.post({"id": "nope"}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "error" in response.json() and TOKEN not in response.text
    non_ascii = server.client.post("/runs", json={"id": "nope"},
                                   headers={b"Authorization": "Bearer caf\u00e9".encode()})
    assert non_ascii.status_code == 401
    assert stored() == []


def test_bad_bodies_are_400(start_server: Callable[..., Server]) -> None:
    server = start_server()
    bodies = [b"{not json", b"", b"\xff\xfe{}", b'"a string"', b"42",
              b'{"id": "n", "latency_ms": NaN}', b'{"runs": {"id": "x"}}',
              b"[" * 100_000 + b"]" * 100_000]
    for body in bodies:
        response = server.post(content=body)
        assert response.status_code == 400, body[:40]
        assert response.json()["error"]
    assert server.post({"id": "q"}, params={"source": "x" * 201}).status_code == 400
    assert stored() == []


def test_body_over_limit_is_413(start_server: Callable[..., Server]) -> None:
    server = start_server(EVALQ_INGEST_MAX_BYTES="2048")
    big = [{"id": f"big-{i}", "input": "x" * 100} for i in range(40)]

    with_length = server.post(big)
    assert with_length.status_code == 413
    assert "2048" in with_length.json()["error"]

    def chunks(total: int) -> Iterator[bytes]:
        yield b'[{"id": "c-0", "input": "'
        for _ in range(total // 1024):
            yield b"x" * 1024
        yield b'"}]'

    for total in (4096, 4 * 1024 * 1024):  # the second one is far past what is buffered
        chunked = server.post(content=chunks(total))
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert chunked.status_code == 413, total
        assert "2048" in chunked.json()["error"]

    small = server.post({"id": "fits"})  # the same server still works
    assert small.json() == {"inserted": 1, "duplicates": 0}
    assert [r.external_id for r in stored()] == ["fits"]


def test_batch_over_max_batch_is_413(start_server: Callable[..., Server]) -> None:
    server = start_server(EVALQ_INGEST_MAX_BATCH="5")
    response = server.post([{"id": f"m-{i}"} for i in range(6)])
    assert response.status_code == 413
    assert "at most 5" in response.json()["error"]
    assert server.post([{"id": f"m-{i}"} for i in range(5)]).json()["inserted"] == 5


def test_invalid_run_is_422_with_its_index(start_server: Callable[..., Server]) -> None:
    server = start_server()
    batch = [{"id": "v-0"}, {"id": "v-1", "latency_ms": -1}, {"id": "v-2"}]

    response = server.post(batch)

    assert response.status_code == 422
    assert response.json()["index"] == 1
    assert "latency_ms" in response.json()["error"]
    assert stored() == []


@pytest.mark.parametrize("run, field", [
    ({"id": "u-1", "colour": "red"}, "colour"),
    ({"input": "no id"}, "id"),
    ({"id": "p-1", "plan": {"plan_context": "q"}}, "plan"),  # not a Portia plan
    ({"id": "p-2", "plan_run": {"outputs": "done"}}, "plan_run"),
])
def test_unknown_field_or_bad_shape_is_422(start_server: Callable[..., Server],
                                           run: dict[str, Any], field: str) -> None:
    server = start_server()
    response = server.post([{"id": "ok"}, run])
    assert response.status_code == 422
    assert response.json()["index"] == 1
    assert field in response.json()["error"]
    assert stored() == []


def test_database_error_is_503(start_server: Callable[..., Server]) -> None:
    path = os.environ["EVALQ_DATABASE_URL"].removeprefix("sqlite:///")
    server = start_server(EVALQ_DATABASE_URL=f"sqlite:///file:{path}?mode=ro&uri=true")
    response = server.post({"id": "d-1"})  # migrated, readable, but the insert fails
    assert response.status_code == 503
    assert response.json() == {"error": "the database is unavailable; retry later"}


def test_other_routes_answer_json(start_server: Callable[..., Server]) -> None:
    server = start_server()
    assert server.client.get("/health").json() == {"status": "ok"}
    assert server.client.get("/nowhere").json()["error"]
    assert server.client.get("/runs", headers=AUTH).status_code == 405


@pytest.mark.parametrize("token", [None, ""])
def test_serve_refuses_to_start_without_token(embedded_env: EnvPatch,
                                              monkeypatch: pytest.MonkeyPatch,
                                              token: str | None) -> None:
    from scheduler.ingest.server import serve

    if token is None:
        monkeypatch.delenv("EVALQ_INGEST_TOKEN", raising=False)
    else:
        monkeypatch.setenv("EVALQ_INGEST_TOKEN", token)
    reset_settings()
    try:
        with pytest.raises(InputError, match="EVALQ_INGEST_TOKEN"):
            serve(port=free_port())
    finally:
        monkeypatch.undo()
        reset_settings()


# --- connection limits: what a client that never finishes cannot hold -----------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    return sock


def _wait_closed(socks: list[socket.socket], timeout: float) -> float:
    """Seconds until the server closed every socket (EOF or reset); fails after `timeout`."""
    start = time.monotonic()
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    open_ = len(socks)
    while open_:
        left = start + timeout - time.monotonic()
        assert left > 0, f"{open_} of {len(socks)} connections still open after {timeout} s"
        for key, _ in selector.select(left):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                open_ -= 1
    selector.close()
    return time.monotonic() - start


def test_half_open_connections_are_closed_and_the_server_still_answers(
        start_server: Callable[..., Server]) -> None:
    server = start_server(EVALQ_INGEST_HEADER_TIMEOUT_S="2", EVALQ_INGEST_MAX_CONNECTIONS="100")
    socks = [_connect(server.port) for _ in range(500)]
    try:
        for sock in socks[1::2]:  # half send a partial request head, half send nothing
            sock.send(b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Le")
        busy = server.client.get("/health")  # beyond 100 connections: uvicorn's 503
        assert busy.status_code == 503
        took = _wait_closed(socks, timeout=2 + 8)
    finally:
        for sock in socks:
            sock.close()
    assert took < 2 + 8
    assert server.client.get("/health").status_code == 200
    assert server.post({"id": "after-the-flood"}).json() == {"inserted": 1, "duplicates": 0}


def test_idle_and_trickling_connections_are_closed(start_server: Callable[..., Server]) -> None:
    server = start_server(EVALQ_INGEST_HEADER_TIMEOUT_S="2", EVALQ_INGEST_KEEP_ALIVE_S="1")
    idle, trickling = _connect(server.port), _connect(server.port)
    for sock in (idle, trickling):
        sock.setblocking(True)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.setblocking(False)
    assert _wait_closed([idle], timeout=1 + 5) < 1 + 5  # the keep-alive timeout
    start = time.monotonic()  # a second request head, one byte every 0.3 s (slowloris)
    closed = False
    for byte in b"POST /runs HTTP/1.1\r\nHost: x\r\n" * 10:
        try:
            trickling.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.3)
    if not closed:
        _wait_closed([trickling], timeout=5)
    assert time.monotonic() - start < 2 + 5  # the header timeout, whatever keeps arriving
    idle.close()
    trickling.close()


def test_a_body_slower_than_the_body_timeout_is_408(start_server: Callable[..., Server]) -> None:
    server = start_server(EVALQ_INGEST_BODY_TIMEOUT_S="1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n"
                 b"\r\n" + b'[{"id": "slow"')
    start = time.monotonic()
    answer = b""
    while chunk := sock.recv(65536):  # the server answers, then closes
        answer += chunk
    sock.close()
    assert time.monotonic() - start < 1 + 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"EVALQ_INGEST_BODY_TIMEOUT_S" in answer
    assert stored() == []


def test_a_token_in_the_query_string_is_refused_and_never_logged(
        start_server: Callable[..., Server]) -> None:
    server = start_server()
    refused = server.client.post(f"/runs?token={TOKEN}", json={"id": "q-1"})
    assert refused.status_code == 401
    assert "never in the URL" in refused.json()["error"]
    also = server.client.post(f"/runs?source=s&access_token={TOKEN}", json={"id": "q-2"})
    assert also.status_code == 401
    assert server.post({"id": "q-3"}, params={"source": "kept-out-of-the-log"}).status_code == 200
    assert [r.external_id for r in stored()] == ["q-3"]
    server.stop()  # the log is complete
    log = server.output()
    assert TOKEN not in log and "token=" not in log and "kept-out-of-the-log" not in log
    assert log.count('"POST /runs HTTP/1.1" 401') == 2
    assert '"POST /runs HTTP/1.1" 200' in log
