"""What `evalq online ...` does: online evaluators ("streams") from the command line (main.py
declares the commands' arguments and imports this module when one of them runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from scheduler.cli import render
from scheduler.cli.common import emit_json, parse_scorer
from scheduler.evaluators import (
    add_evaluator,
    list_evaluators,
    parse_duration,
    parse_time,
    remove_evaluator,
    set_enabled,
    tick_now,
)
from scheduler.reports.evaluator import Baseline, online_report
from scheduler.reports.html import render_online_html, write_html


def _print_evaluators(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Online evaluators")
    for column in ("name", "scorers", "sample", "every", "batch", "filters", "enabled",
                   "last tick"):
        table.add_column(column)
    for r in rows:
        table.add_row(Text(r["name"]), Text(", ".join(r["scorers"])), f"{r['sample_rate']:g}",
                      f"{r['every_s']}s", str(r["batch_size"]),
                      Text(", ".join(f"{k}={v}" for k, v in r["filters"].items()) or "—"),
                      "yes" if r["enabled"] else "paused", (r["last_tick_at"] or "—")[:19])
    render.out.print(table)


def add(name: str, *, scorer: list[str], sample_rate: float, every: str, batch_size: int,
        filter_: list[str] | None, backfill_since: str | None, alert_threshold: float | None,
        alert_window: str, webhook: str | None, as_json: bool) -> None:
    """`evalq online add`."""
    row = add_evaluator(
        name, scorers=[parse_scorer(s) for s in scorer], sample_rate=sample_rate, every=every,
        batch_size=batch_size, filters=filter_, backfill_since=backfill_since,
        alert_threshold=alert_threshold, alert_window=alert_window, webhook_url=webhook,
    )
    if as_json:
        emit_json(row)
    else:
        render.out.print(f"online evaluator {name!r} added: {', '.join(row['scorers'])}, "
                         f"sample {row['sample_rate']:g}, every {row['every_s']}s")


def list_(*, as_json: bool) -> None:
    """`evalq online list`."""
    rows = list_evaluators()
    emit_json(rows) if as_json else _print_evaluators(rows)


def pause(name: str) -> None:
    """`evalq online pause`."""
    set_enabled(name, False)
    render.out.print(f"online evaluator {name!r} paused")


def resume(name: str) -> None:
    """`evalq online resume`."""
    set_enabled(name, True)
    render.out.print(f"online evaluator {name!r} resumed")


def remove(name: str) -> None:
    """`evalq online remove`."""
    remove_evaluator(name)
    render.out.print(f"online evaluator {name!r} removed")


def tick(name: str | None, *, as_json: bool) -> None:
    """`evalq online tick`."""
    result = tick_now(name)
    emit_json(result) if as_json else render.out.print(
        ", ".join(f"{k}: {v}" for k, v in result.items()))


def report(name: str, *, window: str, since: str | None, until: str | None,
           baseline_since: str | None, baseline_until: str | None,
           baseline_experiment: int | None, html: Path | None, as_json: bool) -> None:
    """`evalq online report`."""
    baseline = None
    if baseline_experiment is not None:
        baseline = Baseline(experiment_id=baseline_experiment)
    elif baseline_since is not None:
        baseline = Baseline(since=parse_time(baseline_since),
                            until=parse_time(baseline_until) if baseline_until else None)
    data = online_report(
        name, window_s=int(parse_duration(window)),
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None, baseline=baseline,
    )
    if html is not None:
        write_html(html, render_online_html(data))
    if as_json:
        emit_json(data)
        return
    render.print_online_report(data)
