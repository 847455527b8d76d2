"""Helpers shared by the CLI's command modules: error handling, logging set-up and option
parsing. Cheap to import (main.py's `--help` path): the error classes of the database, storage
and worker layers are imported once a command has failed, the logging set-up's modules once a
command runs."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from scheduler.errors import InputError, SchedulerError

F = TypeVar("F", bound=Callable[..., Any])

_logging = {"wanted": False, "done": False}


def configure_logging_before_commands() -> None:
    """Have the next command set up logging before its body runs (the console entry point
    asks for it; the CLI called in-process, e.g. by a test's CliRunner, does not)."""
    _logging["wanted"] = True


def _configure_logging() -> None:
    if not _logging["wanted"] or _logging["done"]:
        return
    _logging["done"] = True
    import logging  # lazy: only a command that runs logs

    from models.settings import get_settings  # lazy: settings, only once a command runs
    from workers.runtime.logsafe import install_log_filters  # lazy: as above

    logging.basicConfig(level=get_settings().log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_filters()  # URLs logged without query strings or passwords, at every level


def handle_errors(fn: F) -> F:
    """Turn evalq's domain errors into a one-line message and an exit code (2: bad input).
    A query on a database without evalq's current schema says to run `evalq db upgrade`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _configure_logging()
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            failure: BaseException = exc
            if _is_schema_failure(exc):
                try:
                    _raise_if_not_migrated(exc)
                except Exception as raised:  # DatabaseNotMigrated, or the check's own failure
                    failure = raised
            code, message = _explain(failure)
            if code is None:
                if failure is exc:
                    raise
                raise failure  # noqa: B904  (its context is the first failure, as before)
            from rich.markup import escape  # lazy: rich, only for a failed command's message

            from scheduler.cli import render  # lazy: as above

            render.err.print(f"[red]error:[/red] {escape(message)}", highlight=False,
                             soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _is_schema_failure(exc: BaseException) -> bool:
    """A ProgrammingError or OperationalError of SQLAlchemy (only loaded if SQLAlchemy is)."""
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy.exc import OperationalError, ProgrammingError  # lazy: loaded already

    return isinstance(exc, (ProgrammingError, OperationalError))


def _explain(exc: BaseException) -> tuple[int | None, str]:
    """The exit code and one-line message of a domain error; (None, "") for any other
    error (re-raised as it is). The layers' error classes are looked up only in modules
    already imported: an error of a module never loaded cannot have been raised."""
    if isinstance(exc, SchedulerError):
        return exc.exit_code, str(exc)
    if "workers.errors" in sys.modules:
        from workers.errors import WorkerError  # lazy: loaded already (see the docstring)

        if isinstance(exc, WorkerError):
            return 2, str(exc)
    if "models.errors" in sys.modules:
        from models.errors import StorageError  # lazy: loaded already (see the docstring)

        if isinstance(exc, StorageError):
            return 1, str(exc)
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import SQLAlchemyError  # lazy: loaded already (see the docstring)

        if isinstance(exc, SQLAlchemyError):
            # Never the SQL or its values (they hold the user's data): the kind of failure.
            return 1, database_failure(exc)
    return None, ""


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
        from models.migrate import ensure_migrated  # lazy: alembic, only on such a failure

        ensure_migrated()


def warn_no_worker(message: str) -> None:
    """The no-worker warning of a distributed wait, on stderr (the wait goes on)."""
    from scheduler.cli import render  # lazy: rich, only when there is a warning

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
