"""`evalq online ...`: online evaluators ("streams") from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from scheduler.cli import render
from scheduler.cli.common import emit_json, handle_errors, parse_scorer
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

online_app = typer.Typer(
    help="Online evals: evaluators that score sampled production runs on a schedule "
    "(Celery beat runs the tick: `celery -A workers beat`).",
    no_args_is_help=True,
)


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


@online_app.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="A unique name for the evaluator.")],
    scorer: Annotated[list[str], typer.Option(
        "--scorer", "-s", help="Scorer name or JSON spec (repeatable), e.g. plan_run_success "
        "or '{\"type\": \"llm_rubric\", \"criteria\": \"...\"}'.")],
    sample_rate: Annotated[float, typer.Option(help="Fraction of runs scored, in (0, 1]; "
                                               "deterministic per run.")] = 1.0,
    every: Annotated[str, typer.Option(help="How often a batch is claimed: 30s, 5m, 1h.")
                     ] = "60s",
    batch_size: Annotated[int, typer.Option(help="Most runs claimed per tick.")] = 200,
    filter_: Annotated[list[str] | None, typer.Option(
        "--filter", help="key=value on source, status, model or a metadata key "
        "(repeatable; all must match).")] = None,
    backfill_since: Annotated[str | None, typer.Option(
        help="Also score runs created since this time (ISO 8601, or a duration ago: 24h). "
        "Default: only runs created from now on.")] = None,
    alert_threshold: Annotated[float | None, typer.Option(
        help="Alert when a window's mean score falls below this (0-1).")] = None,
    alert_window: Annotated[str, typer.Option(help="Window of the alert check.")] = "1h",
    webhook: Annotated[str | None, typer.Option(
        help="POST alerts to this URL (JSON), with retries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Add an online evaluator; it starts on the next beat tick, no restart needed."""
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


@online_app.command("list")
@handle_errors
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False
          ) -> None:
    """Every online evaluator."""
    rows = list_evaluators()
    emit_json(rows) if as_json else _print_evaluators(rows)


@online_app.command("pause")
@handle_errors
def pause(name: Annotated[str, typer.Argument(help="Evaluator name.")]) -> None:
    """Stop claiming new runs (scores already claimed still complete)."""
    set_enabled(name, False)
    render.out.print(f"online evaluator {name!r} paused")


@online_app.command("resume")
@handle_errors
def resume(name: Annotated[str, typer.Argument(help="Evaluator name.")]) -> None:
    """Claim again, from where it stopped."""
    set_enabled(name, True)
    render.out.print(f"online evaluator {name!r} resumed")


@online_app.command("remove")
@handle_errors
def remove(name: Annotated[str, typer.Argument(help="Evaluator name.")]) -> None:
    """Delete an evaluator with its claims, alerts and scores."""
    remove_evaluator(name)
    render.out.print(f"online evaluator {name!r} removed")


@online_app.command("tick")
@handle_errors
def tick(
    name: Annotated[str | None, typer.Argument(help="Only this evaluator.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run one tick now, whether due or not (embedded mode scores here; distributed mode
    enqueues for the workers). Beat does this on schedule."""
    result = tick_now(name)
    emit_json(result) if as_json else render.out.print(
        ", ".join(f"{k}: {v}" for k, v in result.items()))


@online_app.command("report")
@handle_errors
def report(
    name: Annotated[str, typer.Argument(help="Evaluator name.")],
    window: Annotated[str, typer.Option(help="Window length: 15m, 1h, 1d.")] = "1h",
    since: Annotated[str | None, typer.Option(
        help="Start (ISO 8601 or a duration ago, e.g. 24h). Default: 24h ago.")] = None,
    until: Annotated[str | None, typer.Option(help="End (default: now).")] = None,
    baseline_since: Annotated[str | None, typer.Option(
        help="Baseline period start: drift is a window mean outside its 95% CI.")] = None,
    baseline_until: Annotated[str | None, typer.Option(help="Baseline period end.")] = None,
    baseline_experiment: Annotated[int | None, typer.Option(
        help="Use an offline experiment's scores as the baseline.")] = None,
    html: Annotated[Path | None, typer.Option(
        help="Also write a self-contained HTML page: each scorer's windowed mean with its "
        "confidence band, drift marked.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per window: runs scored, mean per scorer with its 95% CI, pass rate, drift flag."""
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
