"""Helpers shared by the CLI's command modules: error handling and option parsing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from models.errors import StorageError
from models.migrate import ensure_migrated
from scheduler.cli import render
from scheduler.errors import InputError, SchedulerError
from workers.errors import WorkerError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn evalq's domain errors into a one-line message and an exit code (2: bad input).
    A query on a database without evalq's current schema says to run `evalq db upgrade`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return fn(*args, **kwargs)
            except (ProgrammingError, OperationalError) as exc:
                _raise_if_not_migrated(exc)
                raise
        except SchedulerError as exc:
            render.err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                             soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except WorkerError as exc:
            render.err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                             soft_wrap=True)
            raise typer.Exit(2) from None
        except StorageError as exc:
            render.err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                             soft_wrap=True)
            raise typer.Exit(1) from None
        except SQLAlchemyError as exc:
            # Never the SQL or its values (they hold the user's data): the kind of failure.
            render.err.print(f"[red]error:[/red] {escape(database_failure(exc))}",
                             highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def database_failure(exc: Exception) -> str:
    """What went wrong in the database, without the statement or its parameters."""
    orig = getattr(exc, "orig", None)
    kind = type(orig if orig is not None else exc).__name__
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return (f"the database failed ({kind}{f', SQLSTATE {code}' if code else ''}); check "
            "EVALQ_DATABASE_URL and that the database is up, then run the command again")


def _raise_if_not_migrated(exc: Exception) -> None:
    """A query that failed on a missing table or column: raise DatabaseNotMigrated (a
    message saying to run `evalq db upgrade`) when the schema is not evalq's current one;
    return otherwise (the caller re-raises the original error)."""
    text = str(exc)
    if any(sign in text for sign in ("no such table", "no such column",  # SQLite
                                     "UndefinedTable", "UndefinedColumn")):  # PostgreSQL
        ensure_migrated()


def warn_no_worker(message: str) -> None:
    """The no-worker warning of a distributed wait, on stderr (the wait goes on)."""
    render.err.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def parse_scorer(text: str) -> str | dict[str, Any]:
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"--scorer {text!r} is not valid JSON: {exc.msg}") from None
        return spec  # type: ignore[no-any-return]
    return text


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--param {pair!r} must look like key=value (e.g. temperature=0)")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params
