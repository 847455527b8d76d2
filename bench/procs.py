"""Process helpers for the benchmarks: CPU time and peak RSS from /proc, services.

The tests use `RedisServer` and `free_port` too (tests may import bench, never the
other way round)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / _TICKS


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    mem = next((int(line.split()[1]) // 1024 for line in
                Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_mb": mem,
            "python": sys.version.split()[0]}


def commit() -> dict[str, Any]:
    """The commit measured, and the files of the work tree that differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=REPO, capture_output=True, text=True, check=False).stdout
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted": changed}


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


def create_pg_database(admin_url: str) -> str:
    """A fresh PostgreSQL database for one benchmark run; returns its SQLAlchemy URL."""
    import psycopg  # lazy: ~150 ms to import; the tests import this module for RedisServer

    name = f"evalq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    import psycopg  # lazy, as in create_pg_database


    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_worker(env: dict[str, str], concurrency: int, name: str, log: Path,
                 threads: int = 8) -> subprocess.Popen[bytes]:
    """The Procfile's worker command (threads pool, all queues, events on), with
    `concurrency` model calls in flight (EVALQ_MODEL_CONCURRENCY)."""
    env = {**env, "EVALQ_MODEL_CONCURRENCY": str(concurrency)}
    cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "threads",
           "--concurrency", str(threads), "--queues",
           "evalq.offline,evalq.online,evalq.control", "--events", "--loglevel", "INFO",
           "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle"]
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "ready." in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("worker not ready after 90 s")
