"""Rich rendering of reports and progress for the CLI (stdout: results, stderr: progress)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console()
err = Console(stderr=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(report: dict[str, Any]) -> None:
    """The human form of `experiment_report`."""
    c = report["counts"]
    ds = report["dataset"]
    out.print(
        f"[bold]Experiment {report['experiment_id']}[/bold] {report['name']}  "
        f"status=[bold]{report['status']}[/bold]  model={report['model']}  "
        f"dataset={ds['name']}@{(ds['version'] or '')[:8]}  mode={report['mode']}"
    )
    out.print(
        f"items: {c['total']} total, [green]{c['done']} done[/green], "
        f"[red]{c['failed']} failed[/red], {c['pending']} pending"
    )
    table = Table(title="Scores", show_lines=False)
    for name in ("scorer", "mean", "pass rate", "scored", "unscored"):
        table.add_column(name, justify="left" if name == "scorer" else "right")
    for label, s in report["scorers"].items():
        table.add_row(label, _fmt(s["mean"]), _fmt(s["pass_rate"]), str(s["n_scored"]),
                      str(s["n_unscored"]))
    out.print(table)
    lat, tok, cost = report["latency_ms"], report["tokens"], report["cost_usd"]
    out.print(
        f"latency p50 {_fmt(lat['p50'], 1)} ms, p95 {_fmt(lat['p95'], 1)} ms · tokens "
        f"{tok['prompt']} in / {tok['completion']} out · cost ${cost['total']:.6f} "
        f"(target ${cost['target']:.6f}, judge ${cost['judge']:.6f})"
        + (f" · {cost['results_without_price']} results with no known price"
           if cost["results_without_price"] else "")
    )
    if report["errors"]:
        errors = ", ".join(f"{k}×{v}" for k, v in report["errors"].items())
        out.print(f"[red]errors:[/red] {errors}")
    if report.get("error"):
        out.print(f"[red]experiment error:[/red] {report['error']}")


def print_experiments(rows: list[dict[str, Any]]) -> None:
    """A table of experiments, newest first."""
    table = Table(title="Experiments")
    for name in ("id", "name", "model", "status", "done", "failed", "total", "created"):
        table.add_column(name)
    for r in rows:
        table.add_row(str(r["id"]), r["name"], r["model"], r["status"], str(r["done"]),
                      str(r["failed"]), str(r["total"]), r["created_at"][:19])
    out.print(table)


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar on stderr fed with `progress()` states (a no-op when disabled)."""
    if not enabled:
        yield lambda _state: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("evaluating", total=total, failed=0)

        def update(state: dict[str, Any]) -> None:
            bar.update(task, completed=state["done"] + state["failed"], failed=state["failed"])

        yield update


def _ci(s: dict[str, Any]) -> str:
    if s.get("mean") is None:
        return "—"
    if s.get("low") is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def print_online_report(report: dict[str, Any]) -> None:
    """The human form of `online_report`: one row per window and scorer."""
    out.print(f"[bold]Online evaluator {report['evaluator']}[/bold]  windows of "
              f"{report['window_s']} s from {str(report['since'])[:19]} to "
              f"{str(report['until'])[:19]}")
    for label, b in (report.get("baseline") or {}).items():
        out.print(f"baseline {label}: {_ci(b)} (n={b.get('n')}, {b.get('source')})")
    table = Table(title="Windows")
    for column in ("window start", "scorer", "n", "mean [95% CI]", "pass rate", "drift"):
        table.add_column(column)
    for window in report["windows"]:
        for label, s in window["scorers"].items():
            drift = "[red]DRIFT[/red]" if s.get("drift") else ""
            table.add_row(str(window["start"])[:19], label, str(s["n"]), _ci(s),
                          _fmt(s.get("pass_rate")), drift)
    out.print(table)
    if not report["windows"]:
        out.print("no scored runs in this period")
