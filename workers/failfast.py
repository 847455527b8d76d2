"""Stopping an experiment early when its first items all fail the same permanent way.

(Stub: filled in by the fail-fast work. `execute_chunk` calls `after_chunk` after each
chunk's outcomes are stored, and `experiment_stopped` before a chunk calls any model.)
"""

from __future__ import annotations


def after_chunk(experiment_id: int) -> None:
    """Called after a chunk with at least one error Result was stored."""


def experiment_stopped(experiment_id: int) -> bool:
    """True when the experiment was stopped (failed): its remaining chunks do nothing."""
    return False
