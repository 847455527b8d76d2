"""Self-contained HTML reports: one file per experiment, comparison or online evaluator.

The page carries its own stylesheet, inline SVG charts and a few lines of script, and
its Content-Security-Policy forbids every network request, so it renders offline and can
be mailed or attached to CI. Every string from the data (inputs, outputs, names) is
escaped; the only script allowed to run is ours (pinned by its hash).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scheduler.reports.experiment import ItemRow
from scheduler.reports.html_assets import charts
from scheduler.reports.html_assets.page import (
    cell_text,
    esc,
    ms,
    num,
    page,
    pct,
    score_cell,
    stat,
    status_pill,
    thead,
    usd,
)
from scheduler.reports.html_assets.static import FILTER_JS

# --- experiment ---------------------------------------------------------------------


def _experiment_header(report: dict[str, Any]) -> str:
    ds = report.get("dataset") or {}
    counts, cost = report.get("counts") or {}, report.get("cost_usd") or {}
    lat, tok = report.get("latency_ms") or {}, report.get("tokens") or {}
    subject = (f"model <b>{esc(report['model'])}</b>" if report.get("model")
               else f"target <b>{esc(report.get('target'))}</b>")
    repeats = report.get("repeats") or 1
    sub = [f"Experiment #{esc(report.get('experiment_id'))}", subject,
           f"dataset <b>{esc(ds.get('name'))}@{esc(ds.get('version'))}</b>",
           f"mode {esc(report.get('mode'))}", f"{repeats} repeat{'s' if repeats > 1 else ''}"]
    if report.get("finished_at"):
        sub.append(f"finished {esc(str(report['finished_at'])[:16].replace('T', ' '))}")
    wall, rate = report.get("wall_time_s"), report.get("items_per_s")
    speed = "—" if rate is None else f"{rate:.2f} items/s"
    last = report.get("last_run") or {}
    if last.get("wall_time_s") is not None:
        speed += (f" · last re-run {last['wall_time_s']:.2f} s, {esc(last.get('items'))} items"
                  + ("" if last.get("items_per_s") is None
                     else f", {last['items_per_s']:.2f} items/s"))
    stats = [
        stat("Items", f"{counts.get('done', 0)} / {counts.get('total', 0)}",
             f"{counts.get('failed', 0)} failed · "
             + (f"{counts['skipped_budget']} skipped (budget) · "
                if counts.get("skipped_budget") else "")
             + f"{counts.get('pending', 0)} pending"),
        stat("Cost", usd(cost.get("total")),
             f"target {usd(cost.get('target'))} · judge {usd(cost.get('judge'))}"),
        stat("Latency p50", ms(lat.get("p50")),
             f"p95 {ms(lat.get('p95'))} · p99 {ms(lat.get('p99'))}"),
        stat("Wall time", "—" if wall is None else f"{wall:.2f} s", speed),
        stat("Tokens", f"{tok.get('total') or 0:,}",
             f"{tok.get('prompt') or 0:,} in · {tok.get('completion') or 0:,} out"),
    ]
    warn = ""
    if report.get("errors"):
        errs = ", ".join(f"{esc(k)} × {esc(v)}" for k, v in report["errors"].items())
        warn += f'<div class="warn">Failed items by error type: {errs}</div>'
    if report.get("error"):
        warn += f'<div class="warn">Experiment error: {esc(report["error"])}</div>'
    return (f"<header><h1>{esc(report.get('name'))}{status_pill(report.get('status'))}</h1>"
            f'<div class="sub">{" · ".join(sub)}</div>'
            f'<div class="stats">{"".join(stats)}</div>{warn}</header>')


def _scorer_card(label: str, s: dict[str, Any], values: list[float],
                 by: dict[str, Any] | None) -> str:
    ci = (f"95% CI [{num(s.get('ci_low'))}, {num(s.get('ci_high'))}] over "
          f"{esc(s.get('n_items', '?'))} items"
          if s.get("ci_low") is not None else "95% CI needs 2+ scored items")
    facts = [f"pass rate <b>{pct(s.get('pass_rate'))}</b> of scored rows",
             f"items <b>{esc(s.get('n_items', 0))}</b>",
             f"scored rows <b>{esc(s.get('n_scored', 0))}</b>",
             f"unscored <b>{esc(s.get('n_unscored', 0))}</b>"]
    if s.get("n_failed_items"):
        facts.append(f"failed items <b>{esc(s['n_failed_items'])}</b>")
    if s.get("per_item_sd_mean") is not None:
        facts.append(f"mean SD over repeats <b>{num(s['per_item_sd_mean'])}</b>")
    parts = [f'<div class="card scorer" data-scorer="{esc(label)}">',
             f'<div class="head"><h3>{esc(label)}</h3><span class="d">{ci}</span></div>',
             f'<div class="big">{num(s.get("mean"))}</div>',
             f'<div class="facts">{"<span>" + "</span><span>".join(facts) + "</span>"}</div>',
             '<div class="chart-title">Score distribution</div>',
             charts.histogram(label, values, s.get("mean"))]
    if by and by.get("groups"):
        field = str(by.get("field", ""))
        parts.append(f'<div class="chart-title">By {esc(field)}: mean and 95% CI</div>')
        parts.append(charts.categories(label, field, by["groups"]))
    return "".join(parts) + "</div>"


def _failed(row: ItemRow) -> bool:
    return row.status == "error" or any(
        s.get("value") is None or s.get("passed") is False for s in row.scores.values())


ITEM_TABLE_CAP = 1000
"""Rows of the experiment page's item table at most: failures first (failed calls, then
rows with a failed or unscorable score), then the others, each in file order. The page
says so and how many rows the experiment has; `evalq report --json` and JUnit have them
all."""


def _table_rows(rows: list[ItemRow]) -> list[ItemRow]:
    failed = [r for r in rows if _failed(r)]
    if len(failed) >= ITEM_TABLE_CAP:
        return failed[:ITEM_TABLE_CAP]
    return failed + [r for r in rows if not _failed(r)][:ITEM_TABLE_CAP - len(failed)]


def _items_table(rows: list[ItemRow], labels: list[str]) -> str:
    head = thead("Key", "Repeat", "Input", "Expected", "Output", *labels, "Latency", "Error",
                 numeric=("Repeat", "Latency"))
    shown = rows if len(rows) <= ITEM_TABLE_CAP else _table_rows(rows)
    body = []
    for r in shown:
        error = (f'<span class="err">{esc(r.error_type or "error")}: </span>'
                 f"{cell_text(r.error, 80)}" if r.error else "")
        body.append(
            f'<tr data-failed="{int(_failed(r))}" data-key="{esc(r.key)}">'
            f'<td class="key">{esc(r.key)}</td><td class="num">{r.repeat}</td>'
            f'<td class="txt">{cell_text(r.input)}</td>'
            f'<td class="txt">{cell_text(r.expected)}</td>'
            f'<td class="txt mono">{cell_text(r.output)}</td>'
            + "".join(score_cell(r.scores.get(label)) for label in labels)
            + f'<td class="num">{ms(r.latency_ms)}</td><td class="txt">{error}</td></tr>')
    note = ""
    if len(shown) < len(rows):
        n_failed = sum(1 for r in rows if _failed(r))
        note = (f'<div class="warn" id="capped">This table shows {len(shown):,} of '
                f"{len(rows):,} rows, to keep the page quick to open: failures first "
                f"({min(n_failed, len(shown)):,} of {n_failed:,} failed rows shown), then the "
                "others in file order. The scores, counts and charts above are over every "
                "row; the JUnit file (<code>evalq run --junit</code>) lists them all.</div>")
    return (
        f'{note}<div class="toolbar"><input id="filter" type="search" '
        'placeholder="Filter rows by any text…" aria-label="filter rows">'
        '<label><input id="failed" type="checkbox"> Failures only</label>'
        f'<span id="shown" class="sub">{len(shown)} rows</span></div>'
        f'<div class="scroll"><table id="items">{head}'
        f'<tbody>{"".join(body)}</tbody></table></div>')


def render_experiment_html(report: dict[str, Any], rows: list[ItemRow]) -> str:
    """The page of one experiment: `experiment_report(...)` and its `load_items` rows."""
    scorers: dict[str, Any] = report.get("scorers") or {}
    labels = sorted(set(scorers) | {label for r in rows for label in r.scores})
    cards = []
    for label in labels:
        values = [s["value"] for r in rows
                  if (s := r.scores.get(label)) and s.get("value") is not None]
        cards.append(_scorer_card(label, scorers.get(label) or {}, values, report.get("by")))
    body = (_experiment_header(report)
            + f'<h2>Scorers</h2><div class="cards">{"".join(cards)}</div>'
            + f"<h2>Items</h2>{_items_table(rows, labels)}")
    return page(f"evalq · {report.get('name', 'experiment')}", body, FILTER_JS)


# --- comparison ---------------------------------------------------------------------


def _side(title: str, exp: dict[str, Any]) -> str:
    dataset = f"{exp.get('dataset') or 'dataset'}@{exp.get('dataset_version')}"
    return stat(title, f"#{esc(exp.get('id'))} {esc(exp.get('name') or '')}",
                f"model {esc(exp.get('model'))} · {esc(dataset)}")


def _paired_table(data: dict[str, Any]) -> str:
    """{baseline: {...}, candidate: {...}, diff: {...}} as rows of metric × side; any
    other shape as rows of (nested) key and value."""
    def shown(value: Any) -> str:
        return f"{value:,.6g}" if isinstance(value, float) else esc("—" if value is None
                                                                    else value)

    base, cand = data.get("baseline"), data.get("candidate")
    if isinstance(base, dict) and isinstance(cand, dict):
        diff: dict[str, Any] = data["diff"] if isinstance(data.get("diff"), dict) else {}
        rows = "".join(f"<tr><td>{esc(k)}</td>" + "".join(
            f'<td class="num">{shown(side.get(k))}</td>' for side in (base, cand, diff))
            + "</tr>" for k in dict.fromkeys([*base, *cand]))
        sides = ("Baseline", "Candidate", "Diff")
        return f"<table>{thead('', *sides, numeric=sides)}<tbody>{rows}</tbody></table>"
    flat = "".join(f'<tr><td>{esc(k)}</td><td class="num">{shown(v)}</td></tr>'
                   for k, v in data.items())
    return f"<table><tbody>{flat}</tbody></table>"


def _flips(label: str, kind: str, flips: list[dict[str, Any]], total: int) -> str:
    if not flips:
        return ""
    was_pass = kind == "pass_to_fail"
    title = "pass → fail" if was_pass else "fail → pass"
    rows = "".join(
        f'<tr><td class="key">{esc(f.get("key"))}</td>'
        f'<td class="txt">{cell_text(f.get("input"))}</td>'
        f'<td class="txt">{cell_text(f.get("expected"))}</td>'
        f'<td class="txt mono">{cell_text(f.get("baseline_output"))}</td>'
        + score_cell({"value": f.get("baseline_value"), "passed": was_pass,
                      "explanation": f.get("baseline_explanation")})
        + f'<td class="txt mono">{cell_text(f.get("candidate_output"))}</td>'
        + score_cell({"value": f.get("candidate_value"), "passed": not was_pass,
                      "explanation": f.get("candidate_explanation")}) + "</tr>"
        for f in flips)
    count = f"{len(flips)} of {total}" if total > len(flips) else str(len(flips))
    return (f'<h3 style="margin:18px 0 8px">{esc(label)}: {title} ({count})</h3>'
            f'<div class="scroll"><table class="flips" data-scorer="{esc(label)}" '
            f'data-kind="{kind}">'
            + thead("Key", "Input", "Expected", "Baseline output", "Baseline score",
                    "Candidate output", "Candidate score")
            + f"<tbody>{rows}</tbody></table></div>")


def _n_flips(s: dict[str, Any], kind: str) -> int:
    return int(s.get(f"n_{kind}", len(s.get(kind) or [])))


def _diff_row(label: str, s: dict[str, Any]) -> str:
    color = charts.verdict_color(s.get("verdict"), s.get("diff"), s.get("ci_low"),
                                 s.get("ci_high"))
    cells = [num(s.get("baseline_mean")), num(s.get("candidate_mean")), num(s.get("diff")),
             _ci({"low": s.get("ci_low"), "high": s.get("ci_high")}),
             esc(s.get("n_pairs", "—"))]
    return (f'<tr><td class="key">{esc(label)}</td>'
            + "".join(f'<td class="num">{c}</td>' for c in cells)
            + f'<td style="color:{color};font-weight:600">{esc(s.get("verdict") or "—")}</td>'
            + "".join(f'<td class="num">{_n_flips(s, k)}</td>'
                      for k in ("pass_to_fail", "fail_to_pass")) + "</tr>")


def _compare_notes(comparison: dict[str, Any]) -> str:
    notes = []
    if comparison.get("same_dataset_version") is False:
        notes.append("The experiments ran on different datasets or versions: only the "
                     "items whose key is in both are compared.")
    for side in ("baseline", "candidate"):
        if comparison.get(f"n_only_in_{side}"):
            notes.append(f"{esc(comparison[f'n_only_in_{side}'])} items only in the {side}.")
        if comparison.get(f"scorers_only_in_{side}"):
            notes.append(f"Scorers only in the {side}: "
                         f"{esc(', '.join(map(str, comparison[f'scorers_only_in_{side}'])))}.")
    return "".join(f'<div class="warn">{n}</div>' for n in notes)


def _pairwise(pw: dict[str, Any]) -> str:
    ci = _ci({"low": pw.get("ci_low"), "high": pw.get("ci_high")})
    return ("<h2>Pairwise judge</h2><div class=\"stats\">"
            + stat("Candidate win rate", num(pw.get("win_rate")), f"95% CI {ci}")
            + stat("Wins · ties · losses", f"{esc(pw.get('wins', 0))} · "
                   f"{esc(pw.get('ties', 0))} · {esc(pw.get('losses', 0))}",
                   f"{esc(pw.get('n_could_not_judge', 0))} could not be judged")
            + stat("Judge", esc(pw.get("judge") or "—"),
                   f"cost {usd(pw.get('judge_cost_usd'))}") + "</div>")


def render_compare_html(comparison: dict[str, Any]) -> str:
    """The page of `compare_experiments(...)`: per-scorer differences with their paired
    intervals, cost and latency side by side, and the items that flipped."""
    base, cand = comparison.get("baseline") or {}, comparison.get("candidate") or {}
    scorers: dict[str, Any] = comparison.get("scorers") or {}
    parts = [f"<header><h1>{esc(base.get('name') or 'baseline')} → "
             f"{esc(cand.get('name') or 'candidate')}</h1>"
             f'<div class="sub">{esc(comparison.get("items_compared", "?"))} items compared'
             "</div>",
             f'<div class="stats">{_side("Baseline", base)}{_side("Candidate", cand)}</div>',
             _compare_notes(comparison),
             "</header><h2>Score differences (candidate − baseline)</h2>"]
    numeric = ("Baseline", "Candidate", "Diff", "95% CI", "Pairs", "Pass → fail",
               "Fail → pass")
    head = thead("Scorer", *numeric[:5], "Verdict", *numeric[5:], numeric=numeric)
    rows = "".join(_diff_row(label, s or {}) for label, s in scorers.items())
    parts.append(f'<div class="card">{charts.diff_chart(scorers)}</div>'
                 f'<div class="scroll" style="margin-top:12px"><table>{head}'
                 f"<tbody>{rows}</tbody></table></div>")
    if isinstance(comparison.get("pairwise"), dict):
        parts.append(_pairwise(comparison["pairwise"]))
    extra = [(title, comparison[key]) for key, title in (("cost", "Cost (USD)"),
                                                         ("latency_ms", "Latency (ms)"))
             if isinstance(comparison.get(key), dict)]
    if extra:
        parts.append('<h2>Cost and latency</h2><div class="cards">' + "".join(
            f'<div class="card"><h3>{esc(title)}</h3>{_paired_table(data)}</div>'
            for title, data in extra) + "</div>")
    flips = "".join(_flips(label, kind, (s or {}).get(kind) or [], _n_flips(s or {}, kind))
                    for label, s in scorers.items() for kind in ("pass_to_fail",
                                                                 "fail_to_pass"))
    parts.append("<h2>Flipped items</h2>"
                 + (flips or '<p class="empty">No item changed between pass and fail.</p>'))
    return page(f"evalq · {base.get('name')} vs {cand.get('name')}", "".join(parts))


# --- online -------------------------------------------------------------------------


def _epoch(stamp: Any) -> float | None:
    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if unit == 'day' and n > 1 else ''}"
    return f"{seconds} s"


def _ci(s: dict[str, Any]) -> str:
    if s.get("low") is None or s.get("high") is None:
        return "—"
    return f"[{num(s['low'])}, {num(s['high'])}]"


def _window_row(w: dict[str, Any], label: str, s: dict[str, Any]) -> str:
    drift = '<span class="chip fail">drift</span>' if s.get("drift") else ""
    cells = [esc(s.get("n")), esc(s.get("n_unscored", 0)), num(s.get("mean")), _ci(s),
             pct(s.get("pass_rate"))]
    return (f"<tr><td>{esc(str(w.get('start'))[:19].replace('T', ' '))}</td>"
            f"<td>{esc(str(w.get('end'))[:19].replace('T', ' '))}</td>"
            f'<td class="key">{esc(label)}</td>'
            + "".join(f'<td class="num">{c}</td>' for c in cells) + f"<td>{drift}</td></tr>")


def render_online_html(report: dict[str, Any]) -> str:
    """The page of `online_report(...)`: each scorer's windowed mean over time, with its
    interval, drift marks and the baseline, then a table of the windows."""
    windows: list[dict[str, Any]] = report.get("windows") or []
    window_s = int(report.get("window_s") or 3600)
    baseline: dict[str, Any] = report.get("baseline") or {}
    labels = sorted({label for w in windows for label in w.get("scorers") or {}})
    starts = [t for w in windows if (t := _epoch(w.get("start"))) is not None]
    t0 = _epoch(report.get("since")) or min(starts, default=0.0)
    t1 = _epoch(report.get("until")) or max(starts, default=t0) + window_s
    n_runs = sum(s.get("n") or 0 for w in windows for s in (w.get("scorers") or {}).values())
    drifts = sum(bool(s.get("drift")) for w in windows for s in (w.get("scorers") or {}).values())
    source = next((b.get("source") for b in baseline.values() if b.get("source")), None)
    since, until = str(report.get("since", ""))[:16], str(report.get("until", ""))[:16]
    parts = [f"<header><h1>Online evaluator {esc(report.get('evaluator'))}</h1>"
             f'<div class="sub">windows of {esc(_duration(window_s))} · '
             f"{esc(since.replace('T', ' '))} → {esc(until.replace('T', ' '))} UTC · baseline "
             f"<b>{esc(source or 'none')}</b></div>",
             '<div class="stats">' + stat("Windows", str(len(windows)))
             + stat("Scores", f"{n_runs:,}", "scored in the period")
             + stat("Drift", str(drifts), "window × scorer outside the baseline")
             + stat("Scorers", str(len(labels))) + "</div></header>",
             "<h2>Scores over time</h2>"]
    if not windows:
        parts.append('<p class="empty">No scored runs in this period.</p>')
    for label in labels:
        points = []
        for w in windows:
            s, start = (w.get("scorers") or {}).get(label), _epoch(w.get("start"))
            if s is None or start is None:
                continue
            tip = (f"{w.get('start')}: mean {num(s.get('mean'))} {_ci(s)} n={s.get('n')}"
                   + (" DRIFT" if s.get("drift") else ""))
            points.append(charts.Point(min(start + window_s / 2, t1), s.get("mean"),
                                       s.get("low"), s.get("high"), bool(s.get("drift")), tip))
        parts.append(f'<div class="card" style="margin-bottom:16px"><h3>{esc(label)}</h3>'
                     + charts.timeline(label, points, t0, t1, window_s * 1.5,
                                       baseline.get(label)) + "</div>")
    numeric = ("n", "Unscored", "Mean", "95% CI", "Pass rate")
    head = thead("Window start", "End", "Scorer", *numeric, "Drift", numeric=numeric)
    rows = "".join(_window_row(w, label, s) for w in windows
                   for label, s in sorted((w.get("scorers") or {}).items()))
    parts.append(f'<h2>Windows</h2><div class="scroll"><table id="windows">{head}'
                 f"<tbody>{rows}</tbody></table></div>")
    return page(f"evalq · online {report.get('evaluator')}", "".join(parts))


def write_html(path: str | os.PathLike[str], html: str) -> None:
    """Write the page atomically: a temporary file in the same directory, then rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
