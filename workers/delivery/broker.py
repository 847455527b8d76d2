"""What the broker holds: queue depths, through kombu, on Redis and RabbitMQ alike."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from models.settings import get_settings

log = logging.getLogger(__name__)


def queue_depths(app: Any, queues: Iterable[str], *, url: str | None = None
                 ) -> dict[str, int | None]:
    """Messages waiting (not delivered) in each queue; None where the broker could not
    say (unreachable, or a RabbitMQ queue not declared yet: nothing waits in it)."""
    url = url or get_settings().broker_url or app.conf.broker_url
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_read(url) as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            for name in queues:
                channel = conn.channel()
                try:
                    _, count, _ = channel.queue_declare(queue=name, passive=True)
                    depths[name] = int(count)
                except Exception as exc:  # noqa: BLE001 - amqp 404: the queue does not exist
                    if "NOT_FOUND" in str(exc) or "404" in str(exc):
                        depths[name] = 0
                    else:
                        log.debug("queue depth of %s unknown: %s", name, exc)
                        depths[name] = None
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001 - a closed channel is fine
                        pass
    except Exception as exc:  # noqa: BLE001 - kombu raises many connection error types
        log.debug("broker unreachable for queue depths: %s", exc)
        for name in queues:
            depths.setdefault(name, None)
    return depths
