"""What `evalq list` and `evalq report` do (main.py declares their arguments and imports
this module when one of them runs): reads of the database, nothing enqueued."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import col, select

from models.crud import headline_scores
from models.crud import list_experiments as newest_experiments
from models.db import session_scope
from models.tables import Dataset
from scheduler.cli import render
from scheduler.cli.common import emit_json
from scheduler.reports.experiment import build_report, experiment_report, load_items
from scheduler.reports.html import render_experiment_html, write_html


def list_experiments(*, limit: int, as_json: bool) -> None:
    """`evalq list`."""
    with session_scope() as session:
        experiments = newest_experiments(session=session, limit=limit)
        scores = headline_scores(session=session,
                                 experiment_ids=[e.id for e in experiments if e.id])
        versions = {d.id: f"{d.name}@{d.version[:8]}" for d in session.exec(
            select(Dataset).where(col(Dataset.id).in_({e.dataset_id for e in experiments})))}
        rows = [
            {"id": e.id, "name": e.name, "dataset": versions.get(e.dataset_id),
             "model": e.model, "status": e.status, "done": e.n_done, "failed": e.n_failed,
             "total": e.total_items, "scores": scores.get(e.id or 0, {}),
             "cost_usd": round(e.cost_usd + e.judge_cost_usd, 6),
             "created_at": e.created_at.isoformat()}
            for e in experiments
        ]
    emit_json(rows) if as_json else render.print_experiments(rows)


def report(experiment_id: int, *, by: str | None, html: Path | None, as_json: bool) -> None:
    """`evalq report`: Scores (mean, standard error, 95% t interval, pass rate), counts, latency
    p50/p95/p99, tokens, cost, wall time, items/s, and an optional breakdown."""
    if html is None:  # the statistics' columns only (no inputs or outputs)
        data = experiment_report(experiment_id, by=by)
    else:
        exp, dataset, rows = load_items(experiment_id)
        data = build_report(exp, dataset, rows, by=by)
        write_html(html, render_experiment_html(data, rows))
    if as_json:
        emit_json(data)
        return
    render.print_report(data)
    if html is not None:
        render.out.print(f"HTML report written to {html}")
