"""One asyncio event loop per process, on a daemon thread.

Pool threads (Celery's threads pool, or the embedded thread pool) submit model
calls to it and wait, so all HTTP traffic of a process shares one loop and one
connection pool instead of one blocking client per thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
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
