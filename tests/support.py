"""Test helpers: environment patching, brokers (Redis, RabbitMQ) and real worker
subprocesses."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Protocol

import redis
import sqlalchemy as sa
from sqlmodel import SQLModel

import models.tables  # noqa: F401 - registers every table on SQLModel.metadata
from bench.procs import RedisServer  # bench never imports tests: the helpers live there
from bench.procs import free_port as free_port  # re-exported: the tests import it from here
from models.db import dispose_engines
from models.settings import reset_settings

REPO = Path(__file__).resolve().parent.parent


class EnvPatch:
    """Set EVALQ_* variables for a block and reload settings/engines around it."""

    def __init__(self, **values: str) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> EnvPatch:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        _reload()
        return self

    def __exit__(self, *_: Any) -> None:
        for key, old in self.saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        _reload()


def _reload() -> None:
    reset_settings()
    dispose_engines()


def truncate_all(url: str) -> None:
    """Empty every evalq table of a PostgreSQL test database (ids restart at 1)."""
    names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    engine.dispose()


class Broker(Protocol):
    """What a broker-parametrized test needs of either broker."""

    url: str
    kind: str  # "redis" or "rabbitmq"

    def stop(self) -> None: ...

    def start(self) -> None: ...

    def restart(self) -> None: ...


class RedisBroker:
    """A RedisServer seen as a broker: restart() stops and starts it, and since it keeps
    nothing on disk every queued and unacknowledged message is lost."""

    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        if self.server.process is None:
            self.server.restart()  # RedisServer.restart() starts the process

    def restart(self) -> None:
        self.stop()
        self.start()


RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
RABBITMQ_START_HINT = ("start it with `rabbitmq-server -detached` (then `rabbitmqctl "
                       "await_startup`), or `rabbitmqctl start_app` if the node runs but its "
                       "app was stopped")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """Run `rabbitmqctl ARGS` (quiet), returning its output; RuntimeError on failure."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise RuntimeError("rabbitmqctl is not installed: apt-get install rabbitmq-server")
    done = subprocess.run([binary, "-q", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-1000:]}")
    return done.stdout


class RabbitBroker:
    """A virtual host of its own on the machine's RabbitMQ (127.0.0.1:5672, guest), so
    runs never share queues; `delete()` drops it with everything in it.

    stop()/start()/restart() stop and start the RabbitMQ *application* of the node
    (`rabbitmqctl stop_app` / `start_app`): every connection to every vhost drops, and
    durable queues come back with their persistent messages (Celery's default), which
    is what a broker restart does in production.
    """

    kind = "rabbitmq"

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
        self.stopped = False

    @classmethod
    def create(cls, vhost: str | None = None) -> RabbitBroker:
        """A fresh vhost, guest allowed everything in it. RuntimeError, saying how to
        start RabbitMQ, when it does not answer."""
        if not port_open(RABBITMQ_HOST, RABBITMQ_PORT):
            raise RuntimeError(f"RabbitMQ is not reachable on {RABBITMQ_HOST}:"
                               f"{RABBITMQ_PORT}; {RABBITMQ_START_HINT}")
        broker = cls(vhost or f"evalq_test_{uuid.uuid4().hex[:10]}")
        rabbitmqctl("add_vhost", broker.vhost)
        rabbitmqctl("set_permissions", "-p", broker.vhost, "guest", ".*", ".*", ".*")
        return broker

    def delete(self) -> None:
        """Drop the vhost (its queues and messages); starts the app first if a test
        left it stopped."""
        self.start()
        rabbitmqctl("delete_vhost", self.vhost)

    def stop(self) -> None:
        rabbitmqctl("stop_app")
        self.stopped = True

    def start(self, timeout: float = 120) -> None:
        """Start the app (if this object stopped it) and wait until the port answers."""
        if self.stopped:
            rabbitmqctl("start_app", timeout=timeout)
            self.stopped = False
        deadline = time.monotonic() + timeout
        while not port_open(RABBITMQ_HOST, RABBITMQ_PORT, timeout=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ did not listen on {RABBITMQ_PORT} within "
                                   f"{timeout} s after start_app")
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def queues(self) -> dict[str, tuple[int, int]]:
        """{queue: (messages ready, messages delivered and not acknowledged)} of the
        vhost, as RabbitMQ counts them."""
        out = rabbitmqctl("list_queues", "-p", self.vhost, "--no-table-headers", "name",
                          "messages_ready", "messages_unacknowledged")
        found: dict[str, tuple[int, int]] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                found[parts[0]] = (int(parts[1]), int(parts[2]))
        return found


def redis_flush(url: str) -> None:
    redis.Redis.from_url(url).flushdb()


class WorkerProcess:
    """A `celery -A workers worker` subprocess with its own log file."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log

    @classmethod
    def start(cls, env: dict[str, str], *, name: str, concurrency: int = 8,
              extra: list[str] | None = None, wait_ready: bool = True,
              timeout: float = 60) -> WorkerProcess:
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"evalq-worker-{name}-{os.getpid()}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "threads",
               "--queues", "evalq.offline,evalq.online,evalq.control",
               "--concurrency", str(concurrency), "--events", "--loglevel", "INFO",
               "--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
               *(extra or [])]
        handle = log.open("wb")
        process = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=handle,
                                   stderr=subprocess.STDOUT)
        worker = cls(process, log)
        if wait_ready:
            worker.wait_for("ready.", timeout)
        return worker

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not {text!r} after {timeout}s:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 10
             ) -> tuple[int, bytes]:
    """GET `url` (no proxy), with HTTP basic auth when given: (status, body), also for
    4xx/5xx answers."""
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
