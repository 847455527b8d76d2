"""What `evalq db upgrade | current` do (main.py declares them and imports this module when
one of them runs): the database schema's migrations."""

from __future__ import annotations

from models.db import get_engine, safe_url
from models.migrate import current_revision, head_revision, upgrade
from models.settings import get_settings
from scheduler.cli import render


def db_upgrade() -> None:
    """`evalq db upgrade`."""
    before, after = upgrade()
    url = safe_url(get_settings().database_url)
    if before == after:
        render.out.print(f"{url} is up to date (revision {after})")
    else:
        render.out.print(f"{url} upgraded from {before or 'empty'} to revision {after}")


def db_current() -> None:
    """`evalq db current`."""
    render.out.print(f"database: {current_revision(get_engine()) or 'empty'}, "
                     f"code: {head_revision()}")
