"""One asyncio event loop per process, on a daemon thread, and daemon threads for
blocking calls made from it.

Pool threads (Celery's threads pool, or the embedded thread pool) submit model
calls to it and wait, so all HTTP traffic of a process shares one loop and one
connection pool instead of one blocking client per thread. Blocking work started
from the loop (sync scorers) runs in `in_thread`, never on the loop itself.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
_lock = threading.Lock()


def get_loop() -> asyncio.AbstractEventLoop:
    """This process's background loop, started on first use (and again after a fork)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or not _loop.is_running():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="evalq-aio", daemon=True).start()
            ready.wait()
            _loop, _pid = loop, os.getpid()
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the process loop and wait for its result from this thread."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop()).result(timeout)


class _DaemonThreads:
    """Daemon threads that run blocking calls, as many as are busy at once (idle ones exit
    after a minute). Unlike `asyncio.to_thread`, a call that never returns holds only its
    own thread: the others, the default executor and the process's exit (which joins the
    default executor's threads) are not held up by it."""

    IDLE_S = 60.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="evalq-blocking", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody was promised this thread: leave
                        self._idle -= 1
                        return
                continue  # a job was promised to an idle thread: it is on its way
            job()
            with self._lock:
                self._idle += 1


_threads: tuple[int, _DaemonThreads] | None = None


def _daemon_threads() -> _DaemonThreads:
    global _threads
    with _lock:
        if _threads is None or _threads[0] != os.getpid():  # threads do not survive a fork
            _threads = (os.getpid(), _DaemonThreads())
        return _threads[1]


def in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` on a daemon thread; the returned future (of the running loop) has its
    result or whatever it raised, BaseException included. Cancelling the future does not
    stop the call: a Python thread cannot be killed."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled: the waiter gave up on it
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def job() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter, never lost
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    _daemon_threads().submit(job)
    return future
