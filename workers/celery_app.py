"""The Celery application, configured from evalq's settings.

Reliability settings are on from day one: late acks, reject on worker loss,
prefetch of one task per pool slot, task events for Flower. A worker warms up (litellm,
the database pool, the rate limiter and cache clients: workers.warmup) before it is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, signals

from models.db import dispose_engines
from models.errors import StorageError
from models.migrate import ensure_migrated
from models.settings import get_settings
from workers.delivery.queues import TASK_QUEUES, Queue
from workers.llm.ratelimit import require_shared_rate_limits
from workers.llm.redis_url import RedisRequired
from workers.runtime.logsafe import install_log_filters
from workers.warmup import warm_up

log = logging.getLogger(__name__)


def transport_options(visibility_timeout_s: int) -> dict[str, int]:
    """kombu's Redis transport options.

    A message a worker took but never acknowledged (the worker died) goes back to its
    queue once it is `visibility_timeout` seconds old, but only when a live consumer
    sweeps the unacked set: kombu sweeps every `unacked_restore_interval` seconds and
    scans Redis on every `unacked_restore_throttle`-th sweep (defaults 10 s x 10, so up
    to 100 s late). Sweep often enough that the visibility timeout is the only wait.
    """
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 5)),
        "unacked_restore_throttle": 1,
        # A sweep takes milliseconds; a worker killed while holding the sweep's mutex
        # must not block every other worker's sweeps for kombu's default 5 minutes.
        "unacked_mutex_expire": 30,
    }


def create_app() -> Celery:
    """A Celery app whose config is derived from Settings."""
    settings = get_settings()
    app = Celery("evalq", include=["workers.tasks"])
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a worker outlives any broker outage
        broker_transport_options=transport_options(settings.visibility_timeout_s),
        broker_pool_limit=64,
        task_default_queue=Queue.OFFLINE.value,
        task_routes={task: {"queue": queue.value} for task, queue in TASK_QUEUES.items()},
        # The one periodic entry: the tick reads each evaluator's schedule from the
        # database, so adding an evaluator needs no restart. It expires before the next.
        # (Lost work needs no periodic entry: every worker's heartbeat thread sweeps.)
        beat_schedule={
            "evalq-online-tick": {
                "task": "evalq.online_tick",
                "schedule": settings.tick_interval_s,
                "options": {"expires": max(1.0, settings.tick_interval_s * 0.9)},
            },
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,  # progress is read from the database, never from Celery
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
        # After a lost broker connection Celery lowers the prefetch count and raises it
        # again as the tasks running at the loss are acknowledged; those acks fail (the
        # channel is gone), and a RabbitMQ worker stayed at the lowered count, idle, with
        # work queued. Prefetch is already one per thread: nothing to lower.
        worker_enable_prefetch_count_reduction=False,
        # On a lost broker connection Celery would cancel running late-ack tasks, which
        # the threads pool cannot do (it logs a traceback per task and they run on). Let
        # them finish: their Results are written, and a redelivered copy is skipped.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Celery's soft shutdown: on a cold shutdown (SIGQUIT, or SIGTERM when the worker
        # runs with REMAP_SIGTERM=SIGQUIT) running tasks get this long before the rest is
        # cancelled; a plain SIGTERM is a warm shutdown that waits for them. Waiting on an
        # idle worker buys nothing: retries held for their countdown go back to Redis when
        # the worker's connection closes.
        worker_soft_shutdown_timeout=settings.soft_shutdown_s,
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


app = create_app()
install_log_filters()  # worker and beat logs: URLs without query strings or passwords


def sync_broker_url() -> None:
    """Point the app's configuration at the current EVALQ_BROKER_URL (settings may be
    reloaded, e.g. in a long-lived process or a test). evalq's own sends use `producer()`,
    which always connects to the current URL."""
    url = get_settings().broker_url
    if url and app.conf.broker_url != url:
        app.close()
        app.conf.broker_url = url


@contextmanager
def producer() -> Iterator[Any]:
    """A kombu producer on a fresh connection to the current EVALQ_BROKER_URL, for
    sending a batch of tasks (`app.send_task(..., producer=p)`). Independent of Celery's
    pools, so a broker URL changed since the app was configured is honoured."""
    url = get_settings().broker_url or app.conf.broker_url
    with app.connection_for_write(url) as conn, conn.Producer() as p:
        yield p


@signals.worker_init.connect
def _refuse_unmigrated_database(**_: object) -> None:
    """A worker does not start on a database without evalq's current schema."""
    try:
        require_shared_rate_limits(get_settings())
    except RedisRequired as exc:
        log.critical("evalq worker cannot start: %s", exc)
        raise SystemExit(f"evalq worker cannot start: {exc}") from None
    try:
        ensure_migrated()
    except StorageError as exc:
        log.critical("evalq worker cannot start: %s", exc)
        raise SystemExit(f"evalq worker cannot start: {exc}") from None


@signals.worker_ready.connect
def _warm_up(sender: Any = None, **_: object) -> None:
    """Warm before the worker logs "ready." and before its event loop takes a message,
    so the first experiment runs at the steady rate (workers.warmup). A prefork pool's
    children run tasks, not this process: each warms itself (below)."""
    if type(getattr(sender, "pool", None)).__module__.endswith(".prefork"):
        return
    warm_up()


@signals.worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """Connections and event loops are not shared across a fork: a prefork child makes
    its own, and warms up, before it takes a task."""
    dispose_engines()
    warm_up()
