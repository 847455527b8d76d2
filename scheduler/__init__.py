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
from scheduler.runs import IngestSummary, RunIn, record_run, record_runs

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
    "load_dataset_file",
    "progress",
    "record_run",
    "record_runs",
    "wait_for_experiment",
]
