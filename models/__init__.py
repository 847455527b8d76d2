"""Storage layer of evalq: settings, SQLModel tables, engine/session, queries, migrations.

Imports neither Celery nor litellm.
"""

import models.leases  # noqa: F401  (registers the lease tables)
from models.db import get_engine, safe_url, session_scope
from models.errors import DatabaseNotMigrated, DatabaseUnavailable, NotFound, StorageError
from models.settings import Settings, get_settings, reset_settings
from models.tables import (
    Dataset,
    DatasetItem,
    Experiment,
    ExperimentStatus,
    Result,
    ResultStatus,
    Score,
    SubjectType,
)

__all__ = [
    "Dataset",
    "DatasetItem",
    "DatabaseNotMigrated",
    "DatabaseUnavailable",
    "Experiment",
    "ExperimentStatus",
    "NotFound",
    "Result",
    "ResultStatus",
    "Score",
    "Settings",
    "StorageError",
    "SubjectType",
    "get_engine",
    "get_settings",
    "reset_settings",
    "safe_url",
    "session_scope",
]
