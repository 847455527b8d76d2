"""Control plane of evalq: what gets evaluated and when, reports, the CLI.

Rooms: experiments/ (datasets, enqueue, dispatch, wait, re-runs), evaluators.py (online
evaluators), ingest/ (production runs in), reports/ (numbers out), cli/ (the `evalq`
command), checks.py (input checks shared by them), liveness.py (who does the work).
This module hands on the Python API, each name imported from its module when first used
(PEP 562): importing any scheduler.* module runs this file, and the CLI's `--help` must not
pay for the enqueue path (Celery, the scorers) or the database layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # lazy: the names for type checkers; at run time __getattr__ imports them
    from scheduler.api import wait_for_experiment
    from scheduler.errors import (  # lazy: see above
        DatasetFormatError,
        EnqueueError,
        InputError,
        SchedulerError,
        WaitTimeout,
    )
    from scheduler.experiments.dataset_file import (  # lazy: see above
        ParsedDataset,
        load_dataset_file,
    )
    from scheduler.experiments.enqueue import enqueue_offline_run  # lazy: see above
    from scheduler.experiments.wait import progress  # lazy: see above
    from scheduler.ingest.records import IngestSummary, RunIn, record_runs  # lazy: see above
    from scheduler.ingest.sender import flush_runs, record_run  # lazy: see above
    from scheduler.reports.experiment import experiment_report  # lazy: see above

_WHERE = {
    "DatasetFormatError": "scheduler.errors",
    "EnqueueError": "scheduler.errors",
    "IngestSummary": "scheduler.ingest.records",
    "InputError": "scheduler.errors",
    "ParsedDataset": "scheduler.experiments.dataset_file",
    "RunIn": "scheduler.ingest.records",
    "SchedulerError": "scheduler.errors",
    "WaitTimeout": "scheduler.errors",
    "enqueue_offline_run": "scheduler.experiments.enqueue",
    "experiment_report": "scheduler.reports.experiment",
    "flush_runs": "scheduler.ingest.sender",
    "load_dataset_file": "scheduler.experiments.dataset_file",
    "progress": "scheduler.experiments.wait",
    "record_run": "scheduler.ingest.sender",
    "record_runs": "scheduler.ingest.records",
    "wait_for_experiment": "scheduler.api",
}

__all__ = [
    "DatasetFormatError",
    "EnqueueError",
    "IngestSummary",
    "InputError",
    "ParsedDataset",
    "RunIn",
    "SchedulerError",
    "WaitTimeout",
    "enqueue_offline_run",
    "experiment_report",
    "flush_runs",
    "load_dataset_file",
    "progress",
    "record_run",
    "record_runs",
    "wait_for_experiment",
]


def __getattr__(name: str) -> Any:
    """A public name of the API, imported from its module on first use (then cached)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
