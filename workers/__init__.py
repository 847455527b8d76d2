"""Data plane of evalq: the Celery app, tasks, model calls and scorers.

`celery -A workers worker` finds `workers.app`. Importing this package is cheap: litellm is
imported by a worker before it reports ready (workers/warmup.py), and by the first model
call of any other process; the Celery app (Celery, kombu, the database layer) when `app`
or `Queue` is first asked for (PEP 562), so that `evalq list`, `report` and `scorers`,
which import workers.* modules that need no Celery, do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # lazy: the names for type checkers; at run time __getattr__ imports them
    from workers.celery_app import app
    from workers.delivery.queues import Queue  # lazy: see above

__all__ = ["Queue", "app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.celery_app import app  # lazy: Celery, only when the app is asked for

        return app
    if name == "Queue":
        from workers.delivery.queues import Queue  # lazy: see the module docstring

        return Queue
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
