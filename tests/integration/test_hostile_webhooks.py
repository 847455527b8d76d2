"""Hostile webhook endpoints: a server dripping one byte a second, a 200 MB answer, a
redirect, URLs that are not http(s), and a token in the URL that must stay out of logs.

Every server is a real socket server on 127.0.0.1 in a thread of the test; alerts are
fired through the real code (`check_alerts`, the online tick, the CLI) on a fresh SQLite
file (embedded mode)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from models.aggregates import add_to_rollup
from models.crud import upsert_scores
from models.db import session_scope
from models.settings import get_settings
from models.tables import OnlineAlert, OnlineEvaluator, ProductionRun, ScoreCreate, utcnow
from scheduler.cli.main import app
from scheduler.evaluators import add_evaluator
from tests.support import EnvPatch
from workers.online.alerts import WEBHOOK_ATTEMPTS, check_alerts, wait_for_deliveries
from workers.online.tick import tick

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
BIG = 200 * 1024 * 1024
SECRET = "tok-hostile-5f1e2d3c4b5a"


@dataclass
class Connection:
    """What the server saw of one connection."""

    accepted_at: float
    request_line: str = ""
    sent: int = 0  # bytes written before the client went away (or all were sent)
    closed_at: float | None = None


@dataclass
class HostileServer:
    """A raw HTTP/1.1 server on 127.0.0.1: reads one request, then answers the way
    `mode` says: "drip" (the status line and headers one byte a second, 60 s in all),
    "big" (200 OK with a 200 MB body, streamed), "redirect" (302) or "ok" (200, 2 bytes)."""

    mode: str
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def url(self, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/hook{query}"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = Connection(time.monotonic())
            self.connections.append(record)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        try:
            self._read_request(conn, record)
            getattr(self, f"_{self.mode}")(conn, record)
        except OSError:
            pass  # the client closed the connection: what this test is about
        finally:
            record.closed_at = time.monotonic()
            conn.close()

    @staticmethod
    def _read_request(conn: socket.socket, record: Connection) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        record.request_line = head.split(b"\r\n", 1)[0].decode()
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)

    def _send(self, conn: socket.socket, record: Connection, data: bytes) -> None:
        conn.sendall(data)
        record.sent += len(data)

    def _drip(self, conn: socket.socket, record: Connection) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        for i in range(60):
            if self.stopping.is_set():
                return
            self._send(conn, record, answer[i:i + 1] or b" ")
            time.sleep(1)

    def _big(self, conn: socket.socket, record: Connection) -> None:
        self._send(conn, record, f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n"
                                 "Content-Type: application/json\r\n\r\n".encode())
        chunk = b"x" * 65536
        conn.settimeout(30)
        while record.sent < BIG and not self.stopping.is_set():
            self._send(conn, record, chunk)

    def _redirect(self, conn: socket.socket, record: Connection) -> None:
        self._send(conn, record, f"HTTP/1.1 302 Found\r\nLocation: {self.url('/elsewhere')}"
                                 "\r\nContent-Length: 0\r\n\r\n".encode())

    def _ok(self, conn: socket.socket, record: Connection) -> None:
        self._send(conn, record, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def wait_closed(self, timeout: float) -> None:
        """Wait until every connection's handler has finished."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.wait_closed(5)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    srv = HostileServer(request.param)
    yield srv
    srv.stop()


@pytest.fixture
def webhook_env(embedded_env: Any) -> Iterator[Any]:
    """Embedded mode, a 2 s webhook deadline, retries backing off in milliseconds."""
    with EnvPatch(EVALQ_WEBHOOK_TIMEOUT_S="2", EVALQ_RETRY_INITIAL_S="0.01",
                  EVALQ_RETRY_MAX_S="0.05"):
        yield embedded_env
    wait_for_deliveries(30)  # nothing of this test posts into the next one


ALERT_RUNS = 10


def _evaluator_below_threshold(name: str, webhook: str | None) -> int:
    """An online evaluator (added through the library) whose current window holds
    ALERT_RUNS scored runs (EVALQ_ALERT_MIN_N's default) with a mean of 0.2, under its 0.5
    alert threshold; returns its id."""
    add_evaluator(name, scorers=["exact_match"], alert_threshold=0.5, alert_window="1h",
                  webhook_url=webhook)
    now = utcnow()
    with session_scope() as session:
        ev = session.exec(select(OnlineEvaluator).where(OnlineEvaluator.name == name)).one()
        runs = [ProductionRun(source="test", external_id=uuid.uuid4().hex, created_at=now)
                for _ in range(ALERT_RUNS)]
        session.add_all(runs)
        session.flush()
        upsert_scores(session=session, scores_in=[ScoreCreate(**{
            "subject_type": "run", "subject_id": run.id, "evaluator_id": ev.id,
            "subject_at": now, "scorer": "relevance", "scorer_version": "1", "value": 0.2,
            "passed": False, "explanation": None, "error": None, "meta": None,
            "judge_model": None, "judge_cost_usd": 0.0, "judge_tokens": 0,
            "judge_latency_ms": None}) for run in runs])
        assert ev.id is not None
        for _ in runs:  # as scoring a claim does when it closes the claim
            add_to_rollup(session=session, evaluator_id=ev.id, subject_at=now,
                          scores=[("relevance", 0.2, False)])
        return ev.id


def _alert(evaluator_id: int) -> OnlineAlert:
    with session_scope() as session:
        return session.exec(select(OnlineAlert)
                            .where(OnlineAlert.evaluator_id == evaluator_id)).one()


@pytest.mark.parametrize("server", ["drip"], indirect=True)
def test_a_dripping_webhook_gives_up_at_the_total_deadline_and_delays_no_tick(
        webhook_env: Any, server: HostileServer) -> None:
    """EVALQ_WEBHOOK_TIMEOUT_S is 2 here (shortened): a server sending a byte a second
    never trips a per-read timeout (it ran 40 s per tick before); the POST must still end
    at the setting. This proves the deadline is total."""
    deadline = get_settings().webhook_timeout_s
    slow = _evaluator_below_threshold("slow-hook", server.url())
    other = _evaluator_below_threshold("quiet-neighbour", None)
    started = time.monotonic()
    tick(evaluator_ids=[slow, other], force=True, enqueue=lambda _claim: None)
    tick_s = time.monotonic() - started
    # The tick went on to the next evaluator without waiting for the webhook.
    assert tick_s < deadline / 2, f"the tick took {tick_s:.2f}s with a dripping webhook"
    with session_scope() as session:
        neighbour = session.get(OnlineEvaluator, other)
        assert neighbour is not None and neighbour.last_tick_at is not None
    assert _alert(other).error is None  # fired (no webhook), not held up

    assert wait_for_deliveries(WEBHOOK_ATTEMPTS * (deadline + 2) + 5)
    elapsed = time.monotonic() - started
    alert = _alert(slow)
    assert alert.delivered is False
    assert alert.error is not None and alert.error.startswith("WebhookDeadline")
    assert f"within {deadline:g} s" in alert.error
    # Every attempt lasted the deadline, measured: from one connection to the next.
    accepted = [c.accepted_at for c in server.connections]
    assert len(accepted) == WEBHOOK_ATTEMPTS
    gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False)]
    assert all(deadline - 0.1 <= gap <= deadline + 1.0 for gap in gaps), gaps
    assert WEBHOOK_ATTEMPTS * deadline - 0.1 <= elapsed <= WEBHOOK_ATTEMPTS * (deadline + 1)
    assert all(c.sent < 10 for c in server.connections)  # a few dripped bytes, no answer


@pytest.mark.parametrize("server", ["big"], indirect=True)
def test_a_200_mb_answer_is_not_read(webhook_env: Any, server: HostileServer) -> None:
    ev = _evaluator_below_threshold("big-answer", server.url())
    fired = check_alerts(ev, wait=True)
    assert [(a["delivered"], a["error"]) for a in fired] == [(True, None)]
    server.wait_closed(30)
    (conn,) = server.connections
    # The client read a few KB and closed; the server's writes stopped when the socket
    # buffers were full: far below the 200 MB it was asked to send.
    assert conn.closed_at is not None
    assert conn.sent < 32 * 1024 * 1024, f"{conn.sent} bytes sent"
    assert _alert(ev).delivered is True


@pytest.mark.parametrize("server", ["redirect"], indirect=True)
def test_a_redirect_is_not_followed(webhook_env: Any, server: HostileServer) -> None:
    ev = _evaluator_below_threshold("redirected", server.url())
    fired = check_alerts(ev, wait=True)
    assert [(a["delivered"], a["error"]) for a in fired] == [(False, "webhook answered HTTP 302")]
    assert [c.request_line for c in server.connections] == ["POST /hook HTTP/1.1"]


@pytest.mark.parametrize("server", ["ok"], indirect=True)
def test_the_token_in_a_webhook_url_stays_out_of_logs(
        webhook_env: Any, server: HostileServer, caplog: pytest.LogCaptureFixture) -> None:
    ev = _evaluator_below_threshold("with-token", server.url(f"?token={SECRET}"))
    with caplog.at_level(logging.DEBUG):
        for name in ("httpx", "httpcore"):  # litellm's import sets httpx to WARNING
            caplog.set_level(logging.DEBUG, logger=name)
        fired = check_alerts(ev, wait=True)
    assert [a["delivered"] for a in fired] == [True]
    assert server.connections[0].request_line == f"POST /hook?token={SECRET} HTTP/1.1"
    lines = [r.getMessage() for r in caplog.records]
    assert f"HTTP Request: POST {server.url()} \"HTTP/1.1 200 OK\"" in lines
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    assert [line for line in lines if SECRET in line] == []
    listed = add_evaluator("listed", scorers=["exact_match"],
                           webhook_url=server.url(f"?token={SECRET}"))
    assert listed["webhook_url"] == server.url("?token=***")


@pytest.mark.parametrize("server", ["ok"], indirect=True)
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_the_cli_logs_no_webhook_token(webhook_env: Any, sqlite_url: str,
                                       server: HostileServer, level: str) -> None:
    """`evalq online tick` at EVALQ_LOG_LEVEL=INFO/DEBUG, in a process of its own (the
    CLI's own logging set-up): the alert is delivered, the token is in no output."""
    _evaluator_below_threshold("cli-hook", server.url(f"?token={SECRET}"))
    env = {**os.environ, "EVALQ_LOG_LEVEL": level, "EVALQ_DATABASE_URL": sqlite_url,
           "EVALQ_WEBHOOK_TIMEOUT_S": "2"}
    done = subprocess.run([sys.executable, "-c", "from scheduler.cli.main import main; main()",
                           "online", "tick", "cli-hook"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [c.request_line for c in server.connections] == [
        f"POST /hook?token={SECRET} HTTP/1.1"]
    assert _alert(_id("cli-hook")).delivered is True
    output = done.stdout + done.stderr
    assert "below the alert threshold" in output  # the logs were there to look at
    assert SECRET not in output


def _id(name: str) -> int:
    with session_scope() as session:
        ev = session.exec(select(OnlineEvaluator).where(OnlineEvaluator.name == name)).one()
        assert ev.id is not None
        return ev.id


@pytest.mark.parametrize("webhook", ["file:///etc/passwd", "not-a-url", "http:///no-host",
                                     "ftp://hooks.example/x", "https://hooks.example:99999/"])
def test_online_add_refuses_webhooks_that_are_not_http(embedded_env: Any, webhook: str) -> None:
    result = runner.invoke(app, ["online", "add", "bad-hook", "--scorer", "exact_match",
                                 "--alert-threshold", "0.5", "--webhook", webhook])
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "--webhook" in result.stderr and "http" in result.stderr
    listed = runner.invoke(app, ["online", "list", "--json"])
    assert json.loads(listed.stdout) == []


def test_alerts_fired_in_the_background_are_recorded(webhook_env: Any) -> None:
    """check_alerts returns at once with delivered None (pending); the row gets the outcome."""
    ev = _evaluator_below_threshold("unreachable", "http://127.0.0.1:9/hook")
    fired = check_alerts(ev, now=utcnow() + timedelta(seconds=1))
    assert [(a["delivered"], a["error"]) for a in fired] == [(None, None)]
    assert wait_for_deliveries(30)
    alert = _alert(ev)
    assert alert.delivered is False and alert.error is not None
    assert alert.error.startswith("ConnectError")
