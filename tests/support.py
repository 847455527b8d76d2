"""Test helpers: environment patching and real worker subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    from models.db import dispose_engines
    from models.settings import reset_settings

    reset_settings()
    dispose_engines()


def truncate_all(url: str) -> None:
    """Empty every evalq table of a PostgreSQL test database (ids restart at 1)."""
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    import models.tables  # noqa: F401

    names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    engine.dispose()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A `redis-server` subprocess on a free loopback port, no persistence."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, port: int | None = None) -> RedisServer:
        server = cls(port or free_port())
        server.restart()
        return server

    def restart(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port} within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def redis_flush(url: str) -> None:
    import redis

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
