"""evalq's Python API beyond single functions: a run's wait that ends with its report.

(`scheduler/__init__.py` hands on the whole API: enqueue_offline_run, wait_for_experiment,
experiment_report, progress, record_run(s), load_dataset_file.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scheduler.experiments.wait import wait_until_done
from scheduler.reports.experiment import experiment_report


def wait_for_experiment(
    experiment_id: int,
    timeout: float | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_no_worker: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Block until the experiment is completed or failed (read from the database, never
    from Celery results) and return its report. Raises WaitTimeout. See
    `scheduler.experiments.wait.wait_until_done` for `on_progress` and `on_no_worker`."""
    wait_until_done(experiment_id, timeout, on_progress, on_no_worker)
    return experiment_report(experiment_id)
