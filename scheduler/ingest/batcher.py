"""Group commit for `evalq serve`: the rows of concurrent `POST /runs` requests are written
together, in one transaction (one INSERT on PostgreSQL), and each request is answered
only after the transaction that holds its rows has committed: nothing is lost once a 200
is sent, and a failed write fails every request of its batch (none of them is answered
200, and resending them is harmless: ingestion is idempotent).

No timer: while `writers` transactions are in flight, the rows of new requests wait and
go together in the next one, so batches grow with the load and a lone request waits for
nobody.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

import anyio.to_thread

from models.tables import ProductionRunCreate
from scheduler.ingest.records import IngestSummary, store_groups

_Group = tuple[Sequence[ProductionRunCreate], "asyncio.Future[IngestSummary]"]


class GroupCommit:
    """Writes the rows of concurrent requests together; `await store(rows)` returns the
    request's own IngestSummary once they are committed, or raises the write's error."""

    def __init__(self, *, writers: int = 2, max_rows: int = 5000) -> None:
        self.writers, self.max_rows = writers, max_rows
        self._waiting: deque[_Group] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(self, rows: Sequence[ProductionRunCreate]) -> IngestSummary:
        future: asyncio.Future[IngestSummary] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        self._start_writes()
        # shielded: a client that goes away does not cancel the write its rows are in
        return await asyncio.shield(future)

    def _start_writes(self) -> None:
        while self._waiting and self._in_flight < self.writers:
            batch = [self._waiting.popleft()]
            size = len(batch[0][0])
            while self._waiting and size + len(self._waiting[0][0]) <= self.max_rows:
                size += len(self._waiting[0][0])
                batch.append(self._waiting.popleft())
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[_Group]) -> None:
        try:
            summaries = await anyio.to_thread.run_sync(store_groups, [rows for rows, _ in batch])
        except Exception as exc:  # StoreFailed, StorageError, or a bug: each request says so
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), summary in zip(batch, summaries, strict=True):
                if not future.done():
                    future.set_result(summary)
        finally:
            self._in_flight -= 1
            self._start_writes()
