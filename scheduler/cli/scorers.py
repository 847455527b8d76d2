"""What `evalq scorers` does (main.py declares it and imports this module when it runs): the
scorer registry, listed."""

from __future__ import annotations

import inspect
from typing import Any

from rich.markup import escape

from scheduler.cli import render
from scheduler.cli.common import emit_json
from workers.scorers import known_scorers


def scorers(*, as_json: bool) -> None:
    """`evalq scorers`."""
    listing: dict[str, dict[str, Any]] = {
        name: {"version": info.version, "description": info.description,
               "params": {k: {"required": v is inspect.Parameter.empty,
                              "default": None if v is inspect.Parameter.empty else v}
                          for k, v in info.parameters().items()}}
        for name, info in known_scorers().items()
    }
    if as_json:
        emit_json(listing)
        return
    for name, info in listing.items():
        params = ", ".join(
            f"{k} (required)" if p["required"] else f"{k}={p['default']!r}"
            for k, p in info["params"].items()
        ) or "no parameters"
        render.out.print(f"[bold]{escape(name)}[/bold] v{escape(str(info['version']))}: "
                         f"{escape(str(info['description']))}\n    {escape(params)}")
