"""Queue names, in one place."""

from enum import StrEnum


class Queue(StrEnum):
    """Celery queues that evalq's tasks are routed to."""

    OFFLINE = "evalq.offline"  # chunks of (dataset item, repeat)s of experiments; rescores
    ONLINE = "evalq.online"  # scoring of production runs (online evaluators)
    CONTROL = "evalq.control"  # the online tick


ALL_QUEUES = ",".join(q.value for q in Queue)


# Where each task is routed (celery_app's task_routes is built from this).
TASK_QUEUES: dict[str, Queue] = {
    "evalq.run_items": Queue.OFFLINE,
    "evalq.rescore_result": Queue.OFFLINE,
    "evalq.score_runs": Queue.ONLINE,
    "evalq.online_tick": Queue.CONTROL,
}


def queue_of(task: str) -> str:
    """The queue a task is sent to."""
    return TASK_QUEUES.get(task, Queue.OFFLINE).value
