"""Errors of the storage layer. Each message says what to do next."""


class StorageError(Exception):
    """Base class of the storage layer's errors."""


class DatabaseNotMigrated(StorageError):
    """The database schema is missing or older than this version of evalq."""

    def __init__(self, url: str, current: str | None, head: str) -> None:
        where = "has no evalq tables" if current is None else f"is at revision {current}"
        super().__init__(
            f"the database {url} {where}, but this evalq needs revision {head}: "
            "run `evalq db upgrade` (with the same EVALQ_DATABASE_URL) and start again"
        )
        self.current = current
        self.head = head


class DatabaseUnavailable(StorageError):
    """The database could not be reached within the start-up wait."""


class NotFound(StorageError):
    """A row asked for by id or name does not exist."""
