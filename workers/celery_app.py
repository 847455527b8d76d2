"""The Celery application, configured from evalq's settings.

Reliability settings are on from day one: late acks, reject on worker loss,
prefetch of one task per pool slot, task events for Flower.
"""

from __future__ import annotations

import logging

from celery import Celery, signals

from models.settings import get_settings
from workers.queues import Queue

log = logging.getLogger(__name__)


def create_app() -> Celery:
    """A Celery app whose config is derived from Settings."""
    settings = get_settings()
    app = Celery("evalq", include=["workers.tasks"])
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_pool_limit=64,
        task_default_queue=Queue.OFFLINE.value,
        task_routes={
            "evalq.run_item": {"queue": Queue.OFFLINE.value},
            "evalq.rescore_result": {"queue": Queue.OFFLINE.value},
            "evalq.score_run": {"queue": Queue.ONLINE.value},
            "evalq.online_tick": {"queue": Queue.CONTROL.value},
        },
        # The one periodic entry: the tick reads each evaluator's schedule from the
        # database, so adding an evaluator needs no restart. It expires before the next.
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
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


app = create_app()


def sync_broker_url() -> None:
    """Point the app at the current EVALQ_BROKER_URL (settings may be reloaded, e.g. in a
    long-lived process or a test), dropping pooled connections to the old broker."""
    url = get_settings().broker_url
    if url and app.conf.broker_url != url:
        app.close()
        app.conf.broker_url = url


@signals.worker_init.connect
def _refuse_unmigrated_database(**_: object) -> None:
    """A worker does not start on a database without evalq's current schema."""
    from models.errors import StorageError
    from models.migrate import ensure_migrated

    try:
        ensure_migrated()
    except StorageError as exc:
        log.critical("evalq worker cannot start: %s", exc)
        raise SystemExit(f"evalq worker cannot start: {exc}") from None


@signals.worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """Connections and event loops are not shared across a fork."""
    from models.db import dispose_engines

    dispose_engines()
