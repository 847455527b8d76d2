"""Queue names, in one place."""

from enum import StrEnum


class Queue(StrEnum):
    """Celery queues that evalq's tasks are routed to."""

    OFFLINE = "evalq.offline"  # one task per (dataset item, repeat) of an experiment
    ONLINE = "evalq.online"  # scoring of production runs (online evaluators)
    CONTROL = "evalq.control"  # beat ticks and housekeeping


ALL_QUEUES = ",".join(q.value for q in Queue)
