"""`record_run` in the background: a bounded buffer the caller appends to (a few µs), and a
daemon thread that sends it in batches, to the database or over HTTP to `evalq serve`
(EVALQ_INGEST_URL + EVALQ_INGEST_TOKEN: the instrumented service needs no database
credentials), as the SDKs of Langfuse and LangSmith do.

Never raises into the caller and never blocks it. A full buffer (EVALQ_RECORD_BUFFER runs)
drops the new run and counts it; an invalid run is logged (field and problem, never the
values) and counted as rejected; a database or server that is down is retried with
backoff while the buffer holds what keeps coming. At exit, what is buffered is flushed
for at most EVALQ_RECORD_EXIT_TIMEOUT_S; `flush_runs()` does the same on demand and
`stats()` says what happened to every run.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from models.settings import get_settings
from scheduler.errors import InputError, InvalidRun, StoreFailed
from scheduler.ingest.records import DEFAULT_SOURCE, RunIn, parse_run, store_rows, to_row

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0


def setting(name: str) -> Any:
    """A setting of the background sender (EVALQ_INGEST_URL, EVALQ_RECORD_*), secrets
    unwrapped."""
    value = getattr(get_settings(), name)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


class Sender:
    """One process's buffer and its sending thread (started on the first run)."""

    def __init__(self) -> None:
        self.url: str | None = (setting("ingest_url") or "").rstrip("/") or None
        token = get_settings().ingest_token
        self.token = token.get_secret_value() if token else ""
        self.capacity = max(1, int(setting("record_buffer")))
        self.batch = max(1, int(setting("record_batch")))
        self.interval = float(setting("record_flush_interval_s"))
        self.buffer: deque[tuple[Any, str]] = deque()
        self.wake = threading.Event()
        self.done = threading.Condition()
        self.counts = {"queued": 0, "inserted": 0, "duplicates": 0, "dropped": 0,
                       "rejected": 0, "failed": 0}
        self.busy = False  # the thread holds runs taken from the buffer, not settled yet
        self.stopping = False
        self.client: httpx.Client | None = None
        self.thread = threading.Thread(target=self._loop, name="evalq-record-run", daemon=True)
        self.thread.start()

    # --- the caller's side: no lock, no I/O -------------------------------------------
    def put(self, run: Any, source: str) -> None:
        if len(self.buffer) >= self.capacity:
            self.counts["dropped"] += 1
            if self.counts["dropped"] in (1, 10, 100) or self.counts["dropped"] % 10_000 == 0:
                log.warning("record_run: buffer full (EVALQ_RECORD_BUFFER=%d); %d runs dropped "
                            "so far", self.capacity, self.counts["dropped"])
            return
        self.buffer.append((run, source))
        self.counts["queued"] += 1
        if len(self.buffer) >= self.batch and not self.wake.is_set():
            self.wake.set()

    # --- the thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping:
            self.wake.wait(self.interval)
            self.wake.clear()
            while self.buffer:
                with self.done:
                    self.busy = True
                    taken = [self.buffer.popleft()
                             for _ in range(min(self.batch, len(self.buffer)))]
                try:
                    self._send(taken)
                except Exception as exc:  # a bug: logged, never raised into the caller
                    log.error("record_run: sending %d runs failed: %s", len(taken),
                              type(exc).__name__)
                    self.counts["failed"] += len(taken)
                with self.done:
                    self.busy = False
                    self.done.notify_all()

    def _send(self, taken: list[tuple[Any, str]]) -> None:
        valid: list[tuple[RunIn, str]] = []
        for run, source in taken:
            try:
                valid.append((parse_run(run), source))
            except (InvalidRun, InputError) as exc:
                self._reject(exc)
        if self.url:
            self._post(valid)
        else:
            self._store(valid)

    def _reject(self, exc: Exception) -> None:
        self.counts["rejected"] += 1
        log.warning("record_run: run rejected: %s", exc)

    def _store(self, valid: list[tuple[RunIn, str]]) -> None:
        rows = []
        for run, source in valid:
            try:
                rows.append(to_row(run, source))
            except InvalidRun as exc:
                self._reject(exc)
        self._retrying(lambda: self._store_now(rows), len(rows))

    def _store_now(self, rows: list[Any]) -> bool:
        try:
            summary = store_rows(rows)
        except StoreFailed as exc:
            if exc.unavailable:
                log.warning("record_run: %s", exc)
                return False
            log.error("record_run: %d runs not stored: %s", len(rows), exc)
            self.counts["failed"] += len(rows)
            return True
        self.counts["inserted"] += summary.inserted
        self.counts["duplicates"] += summary.duplicates
        return True

    def _post(self, valid: list[tuple[RunIn, str]]) -> None:
        by_source: dict[str, list[dict[str, Any]]] = {}
        for run, source in valid:
            by_source.setdefault(source, []).append(
                run.model_dump(mode="json", exclude_unset=True, by_alias=False))
        for source, runs in by_source.items():
            self._post_all(source, runs)

    def _post_all(self, source: str, runs: list[dict[str, Any]]) -> None:
        while runs:
            if self._retrying(functools.partial(self._post_now, source, runs), len(runs)) is True:
                return  # else 0: a bad run was taken out of `runs`; send the rest

    def _post_now(self, source: str, runs: list[dict[str, Any]]) -> bool | int:
        """True when settled, False to retry later, 0 when a bad run (422) was taken out
        of `runs` and the rest must be sent again."""
        if self.client is None:
            self.client = httpx.Client(timeout=30, trust_env=False)
        try:
            resp = self.client.post(f"{self.url}/runs", params={"source": source},
                                    json={"runs": runs},
                                    headers={"Authorization": f"Bearer {self.token}"})
        except httpx.HTTPError as exc:
            log.warning("record_run: %s unreachable (%s); retrying", self.url,
                        type(exc).__name__)
            return False
        if resp.status_code == 200:
            body = resp.json()
            self.counts["inserted"] += int(body.get("inserted", 0))
            self.counts["duplicates"] += int(body.get("duplicates", 0))
            return True
        if resp.status_code == 422 and isinstance(resp.json().get("index"), int):
            index = resp.json()["index"]
            self._reject(InputError(resp.json().get("error", "refused")))
            del runs[index]
            return 0 if runs else True  # send the rest again
        if resp.status_code == 413 and len(runs) > 1:  # too large a body: halves
            half = len(runs) // 2
            self._post_all(source, runs[:half])
            self._post_all(source, runs[half:])
            return True
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            log.warning("record_run: %s answered %d; retrying", self.url, resp.status_code)
            return False
        log.error("record_run: %s answered %d (%s); %d runs not stored", self.url,
                  resp.status_code, resp.text[:200], len(runs))
        self.counts["failed"] += len(runs)
        return True

    def _retrying(self, attempt: Callable[[], bool | int], n: int) -> bool | int:
        """Call `attempt` until it settles (anything but False), backing off; when
        stopping (the flush at exit has run out of time), gives up and counts `n` failed."""
        delay = 0.2
        while True:
            outcome = attempt()
            if outcome is not False:
                return outcome
            if self.stopping:
                self.counts["failed"] += n
                return True
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)

    # --- flushing ---------------------------------------------------------------------
    def flush(self, timeout: float | None) -> bool:
        """Wait until the buffer is empty and what the thread took is settled; False on
        timeout."""
        self.wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.done:
            while self.buffer or self.busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.done.wait(left if left is None else min(left, 0.5))
                self.wake.set()
        return True

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "buffered": len(self.buffer),
                "mode": "http" if self.url else "database"}


_sender: Sender | None = None
_pid = os.getpid()
_start_lock = threading.Lock()


def _current() -> Sender:
    global _sender, _pid
    sender = _sender
    if sender is not None and _pid == os.getpid():
        return sender
    with _start_lock:
        if _sender is None or _pid != os.getpid():  # first run, or a forked child
            _sender, _pid = Sender(), os.getpid()
        return _sender


def record_run(run: dict[str, Any] | RunIn, *, source: str = DEFAULT_SOURCE) -> None:
    """Record one production run in the background; returns at once (None), never raises.
    The run is sent later, in a batch (a dict is copied shallowly: do not change what it
    holds after the call). Use `flush_runs()` to wait for it, `stats()` for what happened;
    `record_runs([...])` stores synchronously and says what was new."""
    try:
        _current().put(run if isinstance(run, RunIn) else dict(run), source)
    except Exception as exc:  # e.g. not a mapping: counted, never raised into the caller
        try:
            log.warning("record_run: run rejected: %s", type(exc).__name__)
            _current().counts["rejected"] += 1
        except Exception:  # noqa: S110 - the caller's application must never see an error
            pass


def flush_runs(timeout: float | None = 30.0) -> bool:
    """Send everything `record_run` has buffered; True when all of it is settled (stored,
    a duplicate, rejected or failed: see `stats()`), False if `timeout` s passed first."""
    return _sender.flush(timeout) if _sender is not None and _pid == os.getpid() else True


def stats() -> dict[str, Any]:
    """What `record_run` did in this process: queued, inserted, duplicates, dropped (buffer
    full), rejected (invalid), failed (gave up), buffered (not sent yet), mode."""
    if _sender is None or _pid != os.getpid():
        return {"queued": 0, "inserted": 0, "duplicates": 0, "dropped": 0, "rejected": 0,
                "failed": 0, "buffered": 0, "mode": "http" if setting("ingest_url")
                else "database"}
    return _sender.stats()


def reset(timeout: float | None = 30.0) -> None:
    """Flush and stop this process's sender; the next `record_run` starts a new one with
    the settings as they are then (tests, benchmarks)."""
    global _sender
    with _start_lock:
        sender, _sender = _sender, None
    if sender is not None and _pid == os.getpid():
        sender.flush(timeout)
        sender.stopping = True
        sender.wake.set()
        sender.thread.join(timeout)
        if sender.client is not None:
            sender.client.close()


def _at_exit() -> None:
    sender = _sender
    if sender is None or _pid != os.getpid() or not sender.counts["queued"]:
        return
    if not sender.flush(float(setting("record_exit_timeout_s"))):
        sender.stopping = True
        log.error("record_run: %d runs not sent at exit (EVALQ_RECORD_EXIT_TIMEOUT_S)",
                  len(sender.buffer))


atexit.register(_at_exit)
