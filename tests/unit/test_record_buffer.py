"""record_run in the background: returns at once, never raises, a bounded buffer whose
overflow is counted, invalid runs counted and logged, a flush that stores everything."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlmodel import func, select

from models.db import session_scope
from models.settings import reset_settings
from models.tables import ProductionRun
from scheduler import flush_runs, record_run
from scheduler.ingest import sender
from tests.support import EnvPatch


def _count() -> int:
    with session_scope() as s:
        return int(s.exec(select(func.count()).select_from(ProductionRun)).one())


@pytest.fixture
def fresh(embedded_env: EnvPatch) -> Iterator[None]:
    os.environ.pop("EVALQ_INGEST_URL", None)
    reset_settings()
    sender.reset()
    yield
    sender.reset()


def test_runs_are_stored_in_the_background_and_flushed(fresh: None) -> None:
    for i in range(1200):
        record_run({"id": f"bg-{i}", "output": "x"}, source="app")
    record_run({"id": "bg-0", "output": "x"}, source="app")  # a duplicate
    assert flush_runs(timeout=60)
    stats = sender.stats()
    assert (stats["inserted"], stats["duplicates"], stats["dropped"]) == (1200, 1, 0)
    assert stats["buffered"] == 0 and stats["mode"] == "database"
    assert _count() == 1200


def test_invalid_runs_never_raise_and_are_counted(fresh: None,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    record_run({"id": "ok-1"})
    record_run({"output": "no id"})
    record_run({"id": "nul", "output": "a\u0000b"})
    record_run(42)  # type: ignore[arg-type]  # not a run at all
    assert flush_runs(timeout=60)
    stats = sender.stats()
    assert (stats["inserted"], stats["rejected"]) == (1, 3)
    assert "a\u0000b" not in caplog.text


def test_a_full_buffer_drops_and_counts(embedded_env: EnvPatch) -> None:
    with EnvPatch(EVALQ_RECORD_BUFFER="10", EVALQ_RECORD_FLUSH_INTERVAL_S="60",
                  EVALQ_RECORD_BATCH="1000"):
        reset_settings()
        sender.reset()
        try:
            for i in range(25):
                record_run({"id": f"full-{i}"})
            stats = sender.stats()
            assert stats["dropped"] == 15 and stats["buffered"] == 10
            assert flush_runs(timeout=60)
            assert sender.stats()["inserted"] == 10
        finally:
            sender.reset()
            reset_settings()


def test_an_unreachable_server_never_blocks_or_raises(embedded_env: EnvPatch) -> None:
    with EnvPatch(EVALQ_INGEST_URL="http://127.0.0.1:9", EVALQ_INGEST_TOKEN="t"):
        reset_settings()
        sender.reset()
        try:
            record_run({"id": "lost-1"})
            assert sender.stats()["mode"] == "http"
            assert flush_runs(timeout=0.5) is False  # still retrying: flush says so
        finally:
            sender.reset(timeout=0.1)
            reset_settings()
