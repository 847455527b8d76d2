"""Ingestion benchmark: `POST /runs` of `evalq serve` against a fresh PostgreSQL database,
one run per request and batches, at several connection counts; then `record_run` from
Python: the time it adds to the caller per run, and how long its buffer takes to drain.

    python -m bench.ingest [--seconds 8] [--single-conns 16,64,128] [--batch-conns 2,4,8]

The HTTP load comes from an aiohttp client in this process (it shares the 2 cores with
the server and PostgreSQL). After each case the rows in the database are counted: every
run answered 200 must be there ("lost" is the difference, and must be 0). Writes
bench/results/ingest.json (commit, machine, parameters, every case).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import sqlalchemy as sa

from bench.procs import (
    PG_ADMIN,
    REPO,
    commit,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    free_port,
    machine,
)
from models.db import dispose_engines, get_engine
from models.migrate import upgrade
from models.settings import reset_settings
from scheduler.ingest import sender
from scheduler.ingest.records import record_runs
from scheduler.ingest.sender import record_run

TOKEN = secrets.token_hex(24)


def run_payload(prefix: str, i: int) -> dict[str, Any]:
    """A typical production run: a question, an answer, a few fields of metadata."""
    return {"id": f"{prefix}-{i}", "input": f"Where is my order number {i}?",
            "output": "It ships tomorrow; you will get a tracking link by email.",
            "status": "COMPLETE", "model": "gpt-4o-mini", "latency_ms": 912.5,
            "cost_usd": 0.00042, "metadata": {"environment": "prod", "user": f"u{i % 97}"}}


class Server:
    """`evalq serve` (the same `serve()` the CLI runs) in a subprocess."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = f"from scheduler.ingest.server import serve; serve(port={self.port})"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                                            env={**os.environ, **env}, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/health", trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server not healthy after 60 s")

    def cpu(self) -> float:
        """CPU seconds of the server and its worker processes, if any."""
        total = cpu_seconds(self.process.pid)
        for child in _children(self.process.pid):
            try:
                total += cpu_seconds(child)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def count_rows(prefix: str) -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM production_run WHERE external_id LIKE :p"),
            {"p": f"{prefix}-%"}).scalar_one())


async def http_load(url: str, prefix: str, conns: int, batch: int, seconds: float
                    ) -> dict[str, Any]:
    """`conns` connections posting for `seconds`: one run per request when batch == 1,
    else `{"runs": [...]}` of `batch` runs. Run ids are unique across the case."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    counter = iter(range(10**12))
    ok_runs = 0
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal ok_runs
        while time.monotonic() < stop_at:
            if batch == 1:
                body = json.dumps(run_payload(prefix, next(counter)))
            else:
                body = json.dumps({"runs": [run_payload(prefix, next(counter))
                                            for _ in range(batch)]})
            t = time.perf_counter()
            async with session.post(f"{url}/runs", data=body, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    ok_runs += batch
                    latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(conns)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"ok_runs": ok_runs, "elapsed_s": round(elapsed, 3),
            "runs_per_s": round(ok_runs / elapsed), "statuses": statuses,
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)
            if latencies else None}


def http_cases(server: Server, args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    plan = [(1, c) for c in args.single_conns] + [(args.batch, c) for c in args.batch_conns]
    for n, (batch, conns) in enumerate(plan):
        prefix = f"h{n}b{batch}c{conns}"
        cpu0 = server.cpu()
        result = asyncio.run(http_load(server.url, prefix, conns, batch, args.seconds))
        result["server_cpu_s_per_1000_runs"] = round(
            (server.cpu() - cpu0) / max(result["ok_runs"], 1) * 1000, 3)
        stored = count_rows(prefix)
        case = {"runs_per_request": batch, "connections": conns, **result,
                "stored": stored, "lost": result["ok_runs"] - stored}
        print(json.dumps(case), flush=True)
        cases.append(case)
    return cases


def caller_time(prefix: str, n: int, call: Any) -> dict[str, Any]:
    """Time added to the caller per run: each call timed alone (p50, p99, max) and the
    loop as a whole (mean)."""
    payloads = [run_payload(prefix, i) for i in range(n)]
    each = []
    t0 = time.perf_counter()
    for p in payloads:
        t = time.perf_counter_ns()
        call(p)
        each.append(time.perf_counter_ns() - t)
    total = time.perf_counter() - t0
    each.sort()
    return {"calls": n, "mean_us": round(total / n * 1e6, 2),
            "p50_us": round(each[n // 2] / 1000, 2),
            "p99_us": round(each[int(n * 0.99)] / 1000, 2),
            "max_us": round(each[-1] / 1000, 1)}


def record_cases(server: Server, args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    # Before: one synchronous write (a transaction) per run, in the caller's thread.
    sync = caller_time("sync", args.sync_calls, lambda p: record_runs([p], source="bench"))
    sync.update(mode="synchronous record_runs([run]) (the old record_run)",
                stored=count_rows("sync"))
    print(json.dumps(sync), flush=True)
    cases.append(sync)
    for mode, env in (("database", {}),
                      ("http", {"EVALQ_INGEST_URL": server.url, "EVALQ_INGEST_TOKEN": TOKEN})):
        os.environ.update(env)
        reset_settings()
        sender.reset()
        prefix = f"rec-{mode}"
        case = caller_time(prefix, args.record_calls,
                           lambda p: record_run(p, source="bench"))
        t = time.perf_counter()
        drained = sender.flush_runs(timeout=120)
        case.update(mode=f"background record_run, {mode}", drained=drained,
                    drain_s_after_loop=round(time.perf_counter() - t, 3),
                    stats=sender.stats(), stored=count_rows(prefix))
        # dropped: the bounded buffer was full (counted, by design); lost: anything else
        case["lost"] = case["stats"]["queued"] - case["stored"]
        print(json.dumps(case), flush=True)
        cases.append(case)
        for name in env:
            os.environ.pop(name)
        reset_settings()
        sender.reset()
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per HTTP case")
    parser.add_argument("--single-conns", default="16,64,128")
    parser.add_argument("--batch-conns", default="2,4,8")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--record-calls", type=int, default=10_000,
                        help="calls in a tight loop (more than EVALQ_RECORD_BUFFER drop)")
    parser.add_argument("--sync-calls", type=int, default=1_000)
    parser.add_argument("--skip-record", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ingest.json"))
    args = parser.parse_args()
    args.single_conns = [int(c) for c in args.single_conns.split(",") if c]
    args.batch_conns = [int(c) for c in args.batch_conns.split(",") if c]
    db_url = create_pg_database(PG_ADMIN)
    env = {"EVALQ_DATABASE_URL": db_url, "EVALQ_INGEST_TOKEN": TOKEN}
    os.environ.update(env)
    os.environ.pop("EVALQ_INGEST_URL", None)
    reset_settings()
    dispose_engines()
    upgrade()
    results: dict[str, Any] = {
        "benchmark": "ingest", "when": datetime.now(UTC).isoformat(), **commit(),
        "machine": machine(), "database": "PostgreSQL (local, fresh database)",
        "parameters": {"seconds_per_case": args.seconds, "batch": args.batch,
                       "single_conns": args.single_conns, "batch_conns": args.batch_conns,
                       "record_calls": args.record_calls, "sync_calls": args.sync_calls,
                       "client": "aiohttp, in the benchmark process, same machine",
                       "server": "evalq serve (scheduler.ingest.server.serve), defaults"},
    }
    log = Path(args.out).with_suffix(".server.log")
    server = Server(env, log)
    try:
        results["http"] = http_cases(server, args)
        if not args.skip_record:
            results["record_run"] = record_cases(server, args)
    finally:
        server.stop()
        dispose_engines()
        drop_pg_database(PG_ADMIN, db_url)
        log.unlink(missing_ok=True)
    singles = [c["runs_per_s"] for c in results["http"] if c["runs_per_request"] == 1]
    batched = [c["runs_per_s"] for c in results["http"] if c["runs_per_request"] > 1]
    results["summary"] = {
        "best_single_runs_per_s": max(singles, default=None),
        "best_batched_runs_per_s": max(batched, default=None),
        "lost": sum(c["lost"] for c in results["http"])
        + sum(c.get("lost", 0) for c in results.get("record_run", [])),
        "record_run_mean_us": {c["mode"]: c["mean_us"] for c in results.get("record_run", [])},
    }
    print(json.dumps(results["summary"], indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
