"""Data plane of evalq: the Celery app, tasks, model calls and scorers.

`celery -A workers worker` finds `workers.app`. Importing this package is cheap:
litellm is imported only when a task first calls a model.
"""

from workers.celery_app import app
from workers.delivery.queues import Queue

__all__ = ["Queue", "app"]
