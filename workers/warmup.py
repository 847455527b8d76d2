"""A worker is warm when it says it is ready: litellm imported and configured, its call
path run once (a mocked completion, no network), the database pool holding a connection,
and the rate limiter's and response cache's clients created on the worker's event loop.

Without this the first tasks paid for all of it (litellm's import alone is ~3 s), and the
first experiment after a start ran at a third of the steady rate. `workers.celery_app`
calls `warm_up()` from Celery's `worker_ready` (logging is set up, the consumer's event
loop has not taken a message yet, and "ready." is logged after it), or in each prefork
child (`worker_process_init`), where connections and the event loop are new. A failure
here never stops a worker: it logs a warning, and the first task pays for what is
missing, as before.
"""

from __future__ import annotations

import logging
import sys
import time

import sqlalchemy as sa

from models.db import session_scope
from models.settings import get_settings
from workers.llm.cache import store_for
from workers.llm.calls import setup_litellm
from workers.llm.ratelimit import limiter_for
from workers.runtime import aio

log = logging.getLogger(__name__)
WARM_MODEL = "openai/gpt-4o-mini"  # any routable name: the completion is mocked


async def _warm_calls() -> None:
    """On the worker's event loop: the rate limiter's client, then one mocked completion
    (litellm builds its per-call machinery on first use)."""
    litellm = setup_litellm()
    limiter_for(get_settings())
    await litellm.acompletion(model=WARM_MODEL, mock_response="ok", num_retries=0,
                              messages=[{"role": "user", "content": "warm-up"}])


def warm_up() -> str:
    """Import litellm and create the clients and the pool now; returns (and logs at INFO)
    one line saying what was warmed and how long it took."""
    parts: list[str] = []
    started = time.perf_counter()
    try:
        setup_litellm()
        parts.append(f"litellm {time.perf_counter() - started:.1f} s")
    except Exception as exc:  # noqa: BLE001 - a warm-up failure must not stop the worker
        log.warning("warm-up: litellm not imported: %s", exc)
    step = time.perf_counter()
    try:
        with session_scope() as session:
            session.execute(sa.text("SELECT 1"))
        parts.append(f"db pool {time.perf_counter() - step:.2f} s")
    except Exception as exc:  # noqa: BLE001 - the first task reports a database error
        log.warning("warm-up: database not reached: %s", type(exc).__name__)
    step = time.perf_counter()
    try:
        store_for(get_settings())
        if "litellm" in sys.modules:
            aio.run(_warm_calls(), timeout=60)
        parts.append(f"rate limiter, cache, model call path {time.perf_counter() - step:.2f} s")
    except Exception as exc:  # noqa: BLE001 - clients are created again on first use
        log.warning("warm-up: clients not created: %s", exc)
    line = "warm: " + ", ".join(parts) if parts else "warm: nothing warmed"
    log.info("%s (%.1f s)", line, time.perf_counter() - started)
    return line
