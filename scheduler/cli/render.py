"""Rich rendering of reports and progress for the CLI (stdout: results, stderr: progress)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

out = Console()
err = Console(stderr=True)


def _e(value: Any) -> str:
    """Data (names, labels, metadata values, provider messages) inside a markup string:
    escaped, so `[/bold]` in a dataset prints as itself instead of breaking the output."""
    return escape(str(value))


def _t(value: Any) -> Text:
    """Data as a table cell: plain text, never markup."""
    return Text(str(value))


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
        f"[bold]Experiment {report['experiment_id']}[/bold] {_e(report['name'])}  "
        f"status=[bold]{report['status']}[/bold]  model={_e(report['model'])}  "
        f"dataset={_e(ds['name'])}@{(ds['version'] or '')[:8]}  mode={report['mode']}"
        + (f"  concurrency={report['concurrency']}" if report.get("concurrency") else "")
    )
    out.print(
        f"items: {c['total']} total, [green]{c['done']} done[/green], "
        f"[red]{c['failed']} failed[/red], {c['pending']} pending"
        + (f", [yellow]{c['skipped_budget']} skipped: budget ${report.get('budget_usd'):g} "
           "spent[/yellow]" if c.get("skipped_budget") else "")
    )
    repeats = any("per_item_sd_mean" in s for s in report["scorers"].values())
    table = Table(title="Scores (95% CI: Student's t over items, repeats averaged)",
                  show_lines=False)
    columns = ["scorer", "mean", "95% CI", "pass rate", "items", "scored", "unscored"]
    for name in columns + (["item sd (repeats)"] if repeats else []):
        table.add_column(name, justify="left" if name == "scorer" else "right")
    for label, s in report["scorers"].items():
        ci = (f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
              if s.get("ci_low") is not None else "—")
        row: list[Text | str] = [_t(label), _fmt(s["mean"]), ci, _fmt(s["pass_rate"]),
                                 str(s.get("n_items", "—")), str(s["n_scored"]),
                                 str(s["n_unscored"])]
        table.add_row(*row, *([_fmt(s.get("per_item_sd_mean"))] if repeats else []))
    out.print(table)
    if repeats:
        out.print("items: test cases scored (the n of the interval); scored / unscored: "
                  "(item, repeat) rows; pass rate over the scored rows", style="dim")
    if report.get("by"):
        _print_breakdown(report["by"])
    lat, tok, cost = report["latency_ms"], report["tokens"], report["cost_usd"]
    speed = _speed(report)
    hits = report.get("cache", {}).get("hits")
    out.print(
        f"latency p50 {_fmt(lat['p50'], 1)} ms, p95 {_fmt(lat['p95'], 1)} ms, "
        f"p99 {_fmt(lat.get('p99'), 1)} ms{speed}" + (f" · {hits} cache hits" if hits else ""))
    out.print(
        f"tokens "
        f"{tok['prompt']} in / {tok['completion']} out · cost ${cost['total']:.6f} "
        f"(target ${cost['target']:.6f}, judge ${cost['judge']:.6f})"
        + (f" · {cost['results_without_price']} results with no known price"
           if cost["results_without_price"] else "")
    )
    if report["errors"]:
        errors = ", ".join(f"{k}×{v}" for k, v in report["errors"].items())
        out.print(f"[red]errors:[/red] {_e(errors)}")
    if report.get("error"):
        out.print(f"[red]experiment error:[/red] {_e(report['error'])}")


def _speed(report: dict[str, Any]) -> str:
    """" · 12.0 s, 3.3 items/s", and after a resume or rerun the last run's own figures."""
    wall, rate = report.get("wall_time_s"), report.get("items_per_s")
    if wall is None:
        return ""
    text = f" · {wall:.1f} s" + (f", {_rate(rate)} items/s" if rate else "")
    last = report.get("last_run")
    if last:
        text += " from the first start"
        if last.get("wall_time_s") is not None:
            text += (f"; last re-run {last['wall_time_s']:.1f} s, {last['items']} items"
                     + (f", {_rate(last['items_per_s'])} items/s" if last.get("items_per_s")
                        else ""))
    return text


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def print_status(state: dict[str, Any]) -> None:
    """`evalq status`'s line: done / failed / skipped by budget / pending of the total."""
    skipped = state.get("skipped_budget") or 0
    out.print(
        f"experiment {state['experiment_id']}: {state['status']} — {state['done']} done, "
        f"{state['failed']} failed, "
        + (f"{skipped} skipped (budget spent), " if skipped else "")
        + f"{state['pending']} pending of {state['total']}", highlight=False)
    if state.get("error"):
        out.print(f"reason: {state['error']}", highlight=False, soft_wrap=True, markup=False)


def _print_breakdown(by: dict[str, Any]) -> None:
    groups = by["groups"]
    labels = sorted({label for g in groups.values() for label in g["scorers"]})
    table = Table(title=Text(f"By {by['field']}"))
    table.add_column(_t(by["field"]))
    table.add_column("items", justify="right")
    for label in labels:
        table.add_column(_t(label), justify="right")
    for value, group in groups.items():
        cells = []
        for label in labels:
            s = group["scorers"].get(label, {})
            cells.append(_fmt(s.get("mean")) + (f" ±{(s['ci_high'] - s['mean']):.2f}"
                                                 if s.get("ci_high") is not None else ""))
        table.add_row(_t(value), str(group["n_items"]), *cells)
    out.print(table)


def print_experiments(rows: list[dict[str, Any]]) -> None:
    """A table of experiments, newest first."""
    table = Table(title="Experiments")
    for name in ("id", "name", "dataset", "model", "status", "done/total", "scores", "cost",
                 "created"):
        table.add_column(name)
    for r in rows:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in list(r["scores"].items())[:3])
        table.add_row(str(r["id"]), _t(r["name"]), _t(r["dataset"] or "—"), _t(r["model"]),
                      r["status"], f"{r['done']}/{r['total']}", _t(scores or "—"),
                      f"${r['cost_usd']:.4f}", r["created_at"][:16])
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
            bar.update(task, completed=state["total"] - state["pending"], failed=state["failed"])

        yield update


def _ci(s: dict[str, Any]) -> str:
    if s.get("mean") is None:
        return "—"
    if s.get("low") is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def print_online_report(report: dict[str, Any]) -> None:
    """The human form of `online_report`: one row per window and scorer."""
    out.print(f"[bold]Online evaluator {_e(report['evaluator'])}[/bold]  windows of "
              f"{report['window_s']} s from {str(report['since'])[:19]} to "
              f"{str(report['until'])[:19]}")
    for label, b in (report.get("baseline") or {}).items():
        out.print(f"baseline {_e(label)}: {_ci(b)} (n={b.get('n')}, {_e(b.get('source'))})")
    table = Table(title="Windows")
    for column in ("window start", "scorer", "n", "mean [95% CI]", "pass rate", "drift"):
        table.add_column(column)
    for window in report["windows"]:
        for label, s in window["scorers"].items():
            drift = "[red]DRIFT[/red]" if s.get("drift") else ""
            table.add_row(str(window["start"])[:19], _t(label), str(s["n"]), _ci(s),
                          _fmt(s.get("pass_rate")), drift)
    out.print(table)
    if not report["windows"]:
        out.print("no scored runs in this period")


def _signed(value: Any) -> str:
    return "—" if value is None else f"{value:+.3f}"


FLIPS_SHOWN = 10  # flipped items listed per scorer and direction


def _print_flips(label: str, s: dict[str, Any], field: str, name: str, colour: str) -> None:
    """The items of one scorer that flipped one way, baseline → candidate output; the
    count of those not listed."""
    entries = s.get(field) or []
    for entry in entries[:FLIPS_SHOWN]:
        out.print(f"[{colour}]{_e(label)} {name}[/{colour}] {_e(entry['key'])}: "
                  + _e(f"{str(entry.get('baseline_output'))[:60]!r} → "
                       f"{str(entry.get('candidate_output'))[:60]!r}"), highlight=False)
    more = int(s.get(f"n_{field}", len(entries))) - min(len(entries), FLIPS_SHOWN)
    if more > 0:
        out.print(f"[{colour}]{_e(label)} {name}[/{colour}] … and {more} more "
                  "(`--json` or `--html` lists them)", highlight=False)


def print_comparison(data: dict[str, Any]) -> None:
    """The human form of `compare_experiments`."""
    b, c = data["baseline"], data["candidate"]
    out.print(f"[bold]Baseline {b['id']}[/bold] {_e(b['name'])} ({_e(b['model'])})  vs  "
              f"[bold]candidate {c['id']}[/bold] {_e(c['name'])} ({_e(c['model'])})")
    same = data.get("same_dataset_version")
    out.print(f"{data['items_compared']} items compared"
              + ("" if same else f" (different dataset versions: only the common keys; "
                 f"{data.get('n_only_in_baseline', 0)} only in the baseline, "
                 f"{data.get('n_only_in_candidate', 0)} only in the candidate)"))
    table = Table(title="Scores (paired bootstrap 95% CI of the difference)")
    for column in ("scorer", "baseline", "candidate", "diff", "95% CI", "verdict",
                   "pass→fail", "fail→pass"):
        table.add_column(column)
    colours = {"improved": "green", "regressed": "red"}
    for label, s in data["scorers"].items():
        verdict = s.get("verdict", "")
        colour = colours.get(verdict)
        table.add_row(
            _t(label), _fmt(s.get("baseline_mean")), _fmt(s.get("candidate_mean")),
            _signed(s.get("diff")),
            f"[{_signed(s.get('ci_low'))}, {_signed(s.get('ci_high'))}]",
            f"[{colour}]{verdict}[/{colour}]" if colour else verdict,
            str(s.get("n_pass_to_fail", len(s.get("pass_to_fail", [])))),
            str(s.get("n_fail_to_pass", len(s.get("fail_to_pass", [])))),
        )
    out.print(table)
    for label, s in data["scorers"].items():
        for field, name, colour in (("pass_to_fail", "pass→fail", "red"),
                                    ("fail_to_pass", "fail→pass", "green")):
            _print_flips(label, s, field, name, colour)
    cost, lat = data.get("cost", {}), data.get("latency_ms", {})
    out.print(f"cost: ${cost.get('baseline', {}).get('total', 0):.6f} → "
              f"${cost.get('candidate', {}).get('total', 0):.6f} · latency p50 "
              f"{_fmt(lat.get('baseline', {}).get('p50'), 1)} → "
              f"{_fmt(lat.get('candidate', {}).get('p50'), 1)} ms")
    pairwise = data.get("pairwise")
    if pairwise:
        out.print(f"pairwise judge {_e(pairwise.get('judge'))}: candidate win rate "
                  f"{_fmt(pairwise.get('win_rate'))} [{_fmt(pairwise.get('ci_low'))}, "
                  f"{_fmt(pairwise.get('ci_high'))}] over {pairwise.get('n_judged')} items")
