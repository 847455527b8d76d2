"""Control plane of evalq: what gets evaluated and when, reports, the CLI.

Rooms: experiments/ (datasets, enqueue, dispatch, wait, re-runs), evaluators.py (online
evaluators), ingest/ (production runs in), reports/ (numbers out), cli/ (the `evalq`
command), checks.py (input checks shared by them), liveness.py (who does the work).
This module hands on the Python API.
"""

from scheduler.api import wait_for_experiment
from scheduler.errors import (
    DatasetFormatError,
    EnqueueError,
    InputError,
    SchedulerError,
    WaitTimeout,
)
from scheduler.experiments.dataset_file import ParsedDataset, load_dataset_file
from scheduler.experiments.enqueue import enqueue_offline_run
from scheduler.experiments.wait import progress
from scheduler.ingest.records import IngestSummary, RunIn, record_runs
from scheduler.ingest.sender import flush_runs, record_run
from scheduler.reports.experiment import experiment_report

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
