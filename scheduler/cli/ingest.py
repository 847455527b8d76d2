"""What `evalq ingest | serve` do (main.py declares their arguments and imports this module
when one of them runs): production runs for online evals, from a JSONL file or over HTTP."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from scheduler.cli import render
from scheduler.cli.common import emit_json
from scheduler.ingest.records import ingest_file


def ingest(file: Path, *, source: str, as_json: bool) -> None:
    """Store production runs for online evals (idempotent on source + run id). Bad lines
    are reported as FILE:LINE and skipped; good lines are kept. Exit 2 if any line was bad."""
    summary = ingest_file(file, source=source)
    if as_json:
        emit_json(summary.as_dict())
    else:
        for line in summary.errors[:50]:
            render.err.print(f"[red]error:[/red] {escape(str(line))}", highlight=False,
                             soft_wrap=True)
        render.out.print(f"{summary.inserted} runs stored, {summary.duplicates} already "
                         f"stored, {summary.rejected} rejected")
    if summary.rejected:
        raise typer.Exit(2)


def serve(*, host: str, port: int) -> None:
    """HTTP ingestion endpoint: POST /runs (one run, a list, or {"runs": [...]}) with
    `Authorization: Bearer $EVALQ_INGEST_TOKEN`; GET /health."""
    # lazy: the HTTP server (starlette, uvicorn, ~50 ms) is not needed by the other commands
    from scheduler.ingest.server import serve as run_server

    run_server(host=host, port=port)

