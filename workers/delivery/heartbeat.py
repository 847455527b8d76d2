"""A worker process's heartbeat: a thread that says "alive" to the database and sweeps.

Every EVALQ_HEARTBEAT_S seconds the thread upserts the process's WorkerBeat row, then
(every few beats) runs the sweeper, which sends again the work of dead workers and the
messages a broker lost. Any live worker sweeps; nothing depends on beat or on the
broker's visibility timeout. Lease releases that could not be written (the database was
down) are kept here and written as soon as it answers.

A Celery worker starts its heartbeat when it is ready and stops it at shutdown (the
`worker_ready` and `worker_shutdown` handlers below, connected when this module is
imported: every worker imports it through workers.tasks).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import signals
from sqlalchemy.exc import SQLAlchemyError

from models.db import session_scope
from models.leases import beat, mark_stopped, release_lease
from models.settings import get_settings
from models.tables import utcnow
from workers.delivery.sweeper import Sweeper

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 5.0


@dataclass
class _Release:
    lease_id: int
    owner: str
    sent_at: datetime | None


class Heartbeat:
    """The heartbeat thread of one worker process."""

    def __init__(self, name: str, *, queues: str = "", concurrency: int = 0,
                 sweep: bool = True) -> None:
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.sweep_enabled = sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[_Release] = []
        self._lock = threading.Lock()
        self.healthy_since: float | None = None  # monotonic time of the first good beat
        self._last_sweep = 0.0
        self._sweeper: Sweeper | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.beat_once()
        self._thread = threading.Thread(target=self._run, name="evalq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and say so: what this process still holds is free at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush_releases()
        try:
            with session_scope() as session:
                mark_stopped(session=session, name=self.name, now=utcnow())
        except SQLAlchemyError as exc:
            log.warning("could not record that worker %s stopped: %s", self.name, exc)

    def _run(self) -> None:
        interval = get_settings().heartbeat_s
        while not self._stop.wait(interval):
            self.beat_once()
            if self.sweep_enabled and self.healthy_since is not None and \
                    time.monotonic() - self._last_sweep >= max(SWEEP_EVERY_S, interval):
                self._last_sweep = time.monotonic()
                self.sweep_once()

    # -- work -----------------------------------------------------------------------------

    def beat_once(self) -> bool:
        """Write the heartbeat; False when the database did not answer."""
        try:
            with session_scope() as session:
                beat(session=session, name=self.name, hostname=socket.gethostname(),
                     pid=os.getpid(), queues=self.queues, concurrency=self.concurrency,
                     now=utcnow())
        except SQLAlchemyError as exc:
            if self.healthy_since is not None:
                log.warning("heartbeat of %s not written: %s", self.name, type(exc).__name__)
            self.healthy_since = None
            return False
        if self.healthy_since is None:
            self.healthy_since = time.monotonic()
        self.flush_releases()
        return True

    def sweep_once(self) -> None:
        if self._sweeper is None:
            self._sweeper = Sweeper()
        healthy_for = 0.0 if self.healthy_since is None else \
            time.monotonic() - self.healthy_since
        try:
            self._sweeper.sweep(healthy_for_s=healthy_for)
        except Exception:  # noqa: BLE001 - the sweep must never stop the heartbeat
            log.exception("lease sweep failed; trying again in %.0f s", SWEEP_EVERY_S)

    def release_later(self, lease_id: int, owner: str, sent_at: datetime | None) -> None:
        with self._lock:
            self._pending.append(_Release(lease_id, owner, sent_at))

    def flush_releases(self) -> None:
        """Write the lease releases kept while the database was down."""
        with self._lock:
            pending, self._pending = self._pending, []
        for i, item in enumerate(pending):
            try:
                with session_scope() as session:
                    release_lease(session=session, lease_id=item.lease_id, owner=item.owner,
                                  now=utcnow(), sent_at=item.sent_at)
            except SQLAlchemyError:
                with self._lock:
                    self._pending[:0] = pending[i:]
                return


_current: Heartbeat | None = None
_current_lock = threading.Lock()


def start(name: str, *, queues: str = "", concurrency: int = 0) -> Heartbeat:
    """Start this process's heartbeat (once)."""
    global _current
    with _current_lock:
        if _current is None or _current.name != name:
            hb = Heartbeat(name, queues=queues, concurrency=concurrency)
            hb.start()
            _current = hb
        return _current


def current() -> Heartbeat:
    """This process's heartbeat, started on first use in a process that is not a Celery
    worker (a task called directly), so that its leases are held by a live name."""
    if _current is not None:
        return _current
    return start(f"{socket.gethostname()}:{os.getpid()}")


def stop() -> None:
    global _current
    with _current_lock:
        if _current is not None:
            _current.stop()
            _current = None


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: object) -> None:
    """Beat in the database while this worker runs (and sweep for lost work). `sender` is
    the worker's Consumer: its app says which queues the worker consumes."""
    hostname = getattr(sender, "hostname", None) or "celery"
    queues = ",".join(sorted(sender.app.amqp.queues.consume_from or {}))
    concurrency = int(getattr(getattr(sender, "controller", None), "concurrency", 0) or 0)
    start(f"{hostname}:{os.getpid()}", queues=queues, concurrency=concurrency)


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    """A clean stop frees at once what this worker still holds."""
    stop()
