"""The README documents every setting and every CLI command."""

from __future__ import annotations

from pathlib import Path

from models.settings import Settings
from scheduler.cli.main import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [f"EVALQ_{name.upper()}" for name in Settings.model_fields
               if f"EVALQ_{name.upper()}" not in README]
    assert missing == [], f"document these settings in README.md: {missing}"


def test_every_command_is_in_the_readme():
    import typer.main

    group = typer.main.get_command(app)
    names = list(group.commands)  # type: ignore[attr-defined]
    missing = [n for n in names if f"evalq {n}" not in README]
    assert missing == [], f"document these commands in README.md: {missing}"
