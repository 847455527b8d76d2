"""Data plane of evalq: the Celery app, tasks, model calls and scorers.

`celery -A workers worker` finds `workers.app`. Importing this package is cheap: litellm is
imported by a worker before it reports ready (workers/warmup.py), and by the first model
call of any other process.
"""

from workers.celery_app import app
from workers.delivery.queues import Queue

__all__ = ["Queue", "app"]
