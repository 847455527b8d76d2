"""Ingestion under concurrency (the figures themselves come from `python -m bench.ingest`,
never from a timed test): concurrent single-run requests are written together and each
answered after its rows commit (nothing lost once 200 is answered, duplicates counted per
request), and record_run's HTTP mode sends to `evalq serve` without database access."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import httpx

from models.settings import reset_settings
from scheduler import flush_runs, record_run
from scheduler.ingest import sender
from tests.integration.test_server import (  # noqa: F401 - start_server is a fixture
    AUTH,
    TOKEN,
    Server,
    start_server,
    stored,
)
from tests.support import EnvPatch


async def _post_all(url: str, bodies: list[object]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60,
                                 limits=httpx.Limits(max_connections=32)) as client:
        return await asyncio.gather(*(client.post("/runs", json=b, headers=AUTH)
                                      for b in bodies))


def test_concurrent_single_runs_are_all_stored_once(
        start_server:  # noqa: F811
         Callable[..., Server]) -> None:
    server = start_server()
    bodies: list[object] = [{"id": f"c-{i}", "output": i} for i in range(300)]
    bodies += [{"id": f"c-{i}", "output": i} for i in range(50)]  # sent twice, at once
    responses = asyncio.run(_post_all(server.url, bodies))
    assert {r.status_code for r in responses} == {200}
    inserted = sum(r.json()["inserted"] for r in responses)
    duplicates = sum(r.json()["duplicates"] for r in responses)
    assert (inserted, duplicates) == (300, 50)
    assert sorted(r.external_id for r in stored()) == sorted(f"c-{i}" for i in range(300))


def test_record_run_over_http_needs_no_database(
        start_server: Callable[..., Server]) -> None:  # noqa: F811
    server = start_server()
    # the producer's process: the server's URL and token, a database it cannot reach
    with EnvPatch(EVALQ_INGEST_URL=server.url, EVALQ_INGEST_TOKEN=TOKEN):
        db = os.environ["EVALQ_DATABASE_URL"]
        os.environ["EVALQ_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:9/none"
        reset_settings()
        sender.reset()
        try:
            for i in range(700):
                record_run({"id": f"h-{i}", "output": "x", "metadata": {"i": i}},
                           source="svc")
            record_run({"id": "bad", "output": "a\u0000b"}, source="svc")
            assert flush_runs(timeout=60)
            stats = sender.stats()
            assert (stats["mode"], stats["inserted"], stats["rejected"]) == ("http", 700, 1)
        finally:
            sender.reset()
            os.environ["EVALQ_DATABASE_URL"] = db
            reset_settings()
    rows = stored()
    assert len(rows) == 700 and {r.source for r in rows} == {"svc"}
    assert rows[0].meta is not None and "i" in rows[0].meta
