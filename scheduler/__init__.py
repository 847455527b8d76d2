"""Control plane of evalq: what gets evaluated and when, reports, the CLI."""

from scheduler.dataset_file import ParsedDataset, load_dataset_file
from scheduler.errors import (
    DatasetFormatError,
    EnqueueError,
    InputError,
    SchedulerError,
    WaitTimeout,
)
from scheduler.offline import enqueue_offline_run, progress, wait_for_experiment
from scheduler.report import experiment_report

__all__ = [
    "DatasetFormatError",
    "EnqueueError",
    "InputError",
    "ParsedDataset",
    "SchedulerError",
    "WaitTimeout",
    "enqueue_offline_run",
    "experiment_report",
    "load_dataset_file",
    "progress",
    "wait_for_experiment",
]
