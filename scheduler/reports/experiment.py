"""Experiment reports, computed from the database rows (the --json form).

Per scorer: the mean, standard error and 95% confidence interval (Student's t) over the
test cases, each case's repeats averaged first (the case is the unit of sampling: its
repeats are not independent draws); the pass rate over the scored (item, repeat) rows;
how many items and rows were scored, rows that could not be scored, and rows whose target
failed; with repeats, the spread of each item across its repeats. Latency percentiles,
tokens, cost (target and judge), wall time and throughput (the experiment's whole span,
and the last re-run's own), and a breakdown by a metadata field.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from models.crud import (
    get_experiment,
    report_item_rows,
    report_result_rows,
    report_score_rows,
)
from models.db import session_scope
from models.tables import Dataset, Experiment, ResultStatus, TargetOutput
from scheduler.reports.stats import mean_ci


def percentile(values: list[float], pct: float) -> float | None:
    """Linear-interpolated percentile (the 'inclusive' method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]


class ItemRow(TargetOutput):
    """One (test case, repeat) of an experiment with its result (the TargetOutput fields;
    `status` None: no result yet) and its scores by label."""

    item_id: int
    key: str
    position: int
    repeat: int
    input: Any = None
    expected: Any = None
    meta: dict[str, Any] = {}  # the test case's metadata
    status: str | None = None
    updated_at: datetime | None = None  # when its Result was (last) written
    scores: dict[str, dict[str, Any]] = {}


class ReportRow(Protocol):
    """What build_report reads of a row: an ItemRow, or the lighter row experiment_report
    builds (StatRow)."""

    @property
    def item_id(self) -> int: ...
    @property
    def status(self) -> str | None: ...
    @property
    def updated_at(self) -> datetime | None: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def scores(self) -> dict[str, dict[str, Any]]: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def cost_known(self) -> bool: ...
    @property
    def attempts(self) -> int: ...
    @property
    def cached(self) -> bool: ...
    @property
    def error_type(self) -> str | None: ...


_OUTPUT_FIELDS = tuple(TargetOutput.model_fields)
# What build_report reads of a Result; the rest of TargetOutput is content (output, error
# text, tool calls, steps) that only the item table and JUnit show.
_STAT_FIELDS = ("latency_ms", "prompt_tokens", "completion_tokens", "cost_usd", "cost_known",
                "attempts", "cached", "error_type")


class StatRow:
    """The columns of one (item, repeat) that build_report reads: a plain object, several
    times cheaper to build than an ItemRow (experiment_report builds one per row)."""

    __slots__ = ("item_id", "key", "position", "repeat", "status", "updated_at", "meta",
                 "scores", *_STAT_FIELDS)

    def __init__(self, item: Any, repeat: int, meta: dict[str, Any],
                 scores: dict[str, dict[str, Any]], result: Any = None) -> None:
        self.item_id, self.key, self.position = item.id, item.key, item.position
        self.repeat, self.meta, self.scores = repeat, meta, scores
        if result is None:  # no Result yet: TargetOutput's defaults
            self.status = self.updated_at = self.latency_ms = self.error_type = None
            self.prompt_tokens = self.completion_tokens = self.attempts = 0
            self.cost_usd, self.cost_known, self.cached = 0.0, True, False
        else:
            (self.status, self.updated_at, self.latency_ms, self.prompt_tokens,
             self.completion_tokens, self.cost_usd, self.cost_known, self.attempts,
             self.cached, self.error_type) = result


_ROW_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in ItemRow.model_fields.items()}
_FIELDS_SET = frozenset(_ROW_DEFAULTS)


def _item_row(values: dict[str, Any]) -> ItemRow:
    """ItemRow.model_construct(**values) without its per-call overhead (~30 us, most of a
    20,000-item report): every field set, the defaults for those not given, no validation
    (as model_construct). `meta` and `scores` must be given (their defaults are shared)."""
    row = object.__new__(ItemRow)
    object.__setattr__(row, "__dict__", {**_ROW_DEFAULTS, **values})
    object.__setattr__(row, "__pydantic_fields_set__", set(_FIELDS_SET))
    object.__setattr__(row, "__pydantic_extra__", None)
    object.__setattr__(row, "__pydantic_private__", None)
    return row


def load_items(experiment_id: int, *, content: bool = True, meta: bool = True,
               item_ids: Sequence[int] | None = None
               ) -> tuple[Experiment, Dataset | None, list[ItemRow]]:
    """The experiment, its dataset and every (item, repeat) row, in file order.

    Reads only the columns it returns, as plain rows (no ORM objects). content=False
    leaves out what only the item table shows (input, expected, output, error text, tool
    calls, steps: None) -- what build_report needs, for less memory and time (load_content
    fills them in for the rows that need them); meta=False leaves the items' metadata
    out too ({}), which only a breakdown (`by`) reads. item_ids: only these items' rows."""
    fields = _OUTPUT_FIELDS if content else _STAT_FIELDS
    columns = ("id", "item_id", "repeat", "status", "updated_at", *fields)
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        dataset = session.get(Dataset, exp.dataset_id)
        items = report_item_rows(session=session, dataset_id=exp.dataset_id, content=content,
                                 meta=meta or content, item_ids=item_ids)
        results = report_result_rows(session=session, experiment_id=experiment_id,
                                     columns=columns, item_ids=item_ids)
        scores = report_score_rows(session=session, experiment_id=experiment_id,
                                   result_ids=None if item_ids is None
                                   else [r[0] for r in results])
    by_result: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for subject_id, scorer, value, passed, explanation, error, judge_cost in scores:
        by_result[subject_id][scorer] = {"value": value, "passed": passed,
                                         "explanation": explanation, "error": error,
                                         "judge_cost_usd": judge_cost}
    results_by_key: dict[tuple[int, int], dict[str, Any]] = {}
    for result in results:
        found = dict(zip(columns, result, strict=True))
        found["scores"] = by_result.get(found.pop("id"), {})
        results_by_key[(found.pop("item_id"), found.pop("repeat"))] = found
    rows: list[ItemRow] = []
    for item in items:  # file order, then repeats
        base = {"item_id": item.id, "key": item.key, "position": item.position,
                "input": item.input if content else None,
                "expected": item.expected if content else None}
        for rep in range(exp.repeats):
            found = results_by_key.get((item.id, rep)) or {"scores": {}}
            rows.append(_item_row({**base, "repeat": rep,
                                   "meta": dict((item.meta or {}) if meta or content else {}),
                                   **found}))
    return exp, dataset, rows


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def item_means(rows: Sequence[ReportRow], label: str) -> dict[int, list[float]]:
    """The scored values of one scorer per item id (its repeats), items in row order."""
    per_item: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        value = r.scores.get(label, {}).get("value")
        if value is not None:
            per_item[r.item_id].append(float(value))
    return dict(per_item)


def scorer_stats(rows: Sequence[ReportRow], label: str) -> dict[str, Any]:
    """One scorer's statistics. The test case is the unit: each item's scored repeats are
    averaged first, and mean, stderr and the 95% t interval are over those item means
    (n = n_items, t with n_items - 1 degrees of freedom). pass_rate is over the scored
    (item, repeat) rows. With repeats, the mean within-item variance and SD."""
    scored = [r.scores[label] for r in rows if label in r.scores]
    n_values = sum(1 for s in scored if s["value"] is not None)
    per_item = item_means(rows, label)
    means = [statistics.fmean(v) for v in per_item.values()]
    mean, low, high = mean_ci(means)
    if low is not None and high is not None:  # scores live in [0, 1]
        low, high = max(0.0, low), min(1.0, high)
    stderr = (statistics.stdev(means) / math.sqrt(len(means))) if len(means) > 1 else None
    passed = sum(1 for s in scored if s["value"] is not None and s["passed"])
    out: dict[str, Any] = {
        "mean": _r(mean), "stderr": _r(stderr), "ci_low": _r(low), "ci_high": _r(high),
        "ci_method": "t", "pass_rate": _r(passed / n_values) if n_values else None,
        "n_items": len(means), "n_scored": n_values, "n_unscored": len(scored) - n_values,
        "n_failed_items": sum(1 for r in rows if r.status == ResultStatus.ERROR),
    }
    spreads = [v for v in per_item.values() if len(v) > 1]
    if spreads:
        out["per_item_variance_mean"] = _r(statistics.fmean(statistics.variance(v)
                                                            for v in spreads))
        out["per_item_sd_mean"] = _r(statistics.fmean(statistics.stdev(v) for v in spreads))
        out["items_with_repeats"] = len(spreads)
    return out


def _labels(rows: Sequence[ReportRow]) -> list[str]:
    return sorted({label for r in rows for label in r.scores})


def breakdown(rows: Sequence[ReportRow], field_name: str) -> dict[str, Any]:
    """Per value of metadata[field_name]: items and each scorer's mean with its CI."""
    groups: dict[str, list[ReportRow]] = defaultdict(list)
    for r in rows:
        groups[str(r.meta.get(field_name, "(none)"))].append(r)
    labels = _labels(rows)
    return {
        "field": field_name,
        "groups": {
            value: {"n_items": len({r.item_id for r in members}),
                    "scorers": {label: {k: v for k, v in scorer_stats(members, label).items()
                                        if k in ("mean", "ci_low", "ci_high", "pass_rate",
                                                 "n_items", "n_scored")}
                                for label in labels}}
            for value, members in sorted(groups.items())
        },
    }


def load_stat_rows(experiment_id: int, *, meta: bool = False
                   ) -> tuple[Experiment, Dataset | None, list[StatRow]]:
    """load_items for build_report only: StatRows (the statistics' columns, the items'
    metadata only with meta=True), in file order."""
    columns = ("id", "item_id", "repeat", "status", "updated_at", *_STAT_FIELDS)
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        dataset = session.get(Dataset, exp.dataset_id)
        items = report_item_rows(session=session, dataset_id=exp.dataset_id, content=False,
                                 meta=meta)
        results = report_result_rows(session=session, experiment_id=experiment_id,
                                     columns=columns)
        scores = report_score_rows(session=session, experiment_id=experiment_id)
    by_result: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for subject_id, scorer, value, passed, explanation, error, judge_cost in scores:
        by_result[subject_id][scorer] = {"value": value, "passed": passed,
                                         "explanation": explanation, "error": error,
                                         "judge_cost_usd": judge_cost}
    results_by_key = {(r[1], r[2]): r for r in results}
    rows: list[StatRow] = []
    for item in items:  # file order, then repeats
        item_meta = (item.meta or {}) if meta else {}
        for rep in range(exp.repeats):
            result = results_by_key.get((item.id, rep))
            if result is None:
                rows.append(StatRow(item, rep, item_meta, {}))
            else:
                rows.append(StatRow(item, rep, item_meta, by_result.get(result[0], {}),
                                    result[3:]))
    return exp, dataset, rows


def experiment_report(experiment_id: int, by: str | None = None) -> dict[str, Any]:
    """Everything `evalq report --json` prints for one experiment."""
    exp, dataset, rows = load_stat_rows(experiment_id, meta=by is not None)
    return build_report(exp, dataset, rows, by=by)


def build_report(exp: Experiment, dataset: Dataset | None, rows: Sequence[ReportRow],
                 by: str | None = None) -> dict[str, Any]:
    """The report dict from loaded rows."""
    done = [r for r in rows if r.status == ResultStatus.OK]
    failed = [r for r in rows if r.status == ResultStatus.ERROR]
    skipped = [r for r in rows if r.status == ResultStatus.SKIPPED_BUDGET]
    finished = done + failed
    latencies = [r.latency_ms for r in done if r.latency_ms is not None]
    target_cost = sum(r.cost_usd for r in finished)
    judge_cost = sum(s.get("judge_cost_usd") or 0.0 for r in rows for s in r.scores.values())
    prompt_tokens = sum(r.prompt_tokens for r in finished)
    completion_tokens = sum(r.completion_tokens for r in finished)
    report: dict[str, Any] = {
        "experiment_id": exp.id, "name": exp.name, "status": exp.status, "mode": exp.mode,
        "model": exp.model, "target": exp.target,
        "dataset": {"id": exp.dataset_id, "name": dataset.name if dataset else None,
                    "version": dataset.version if dataset else None},
        "repeats": exp.repeats, "concurrency": exp.concurrency,
        "counts": {"total": exp.total_items, "done": len(done), "failed": len(failed),
                   "skipped_budget": len(skipped),
                   "pending": max(0, exp.total_items - len(finished) - len(skipped))},
        "budget_usd": exp.max_cost_usd,
        "scorers": {label: scorer_stats(rows, label) for label in _labels(rows)},
        "latency_ms": {"p50": _r(percentile(latencies, 50), 3),
                       "p95": _r(percentile(latencies, 95), 3),
                       "p99": _r(percentile(latencies, 99), 3),
                       "mean": _r(statistics.fmean(latencies), 3) if latencies else None},
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens,
                   "total": prompt_tokens + completion_tokens},
        "cost_usd": {"target": round(target_cost, 8), "judge": round(judge_cost, 8),
                     "total": round(target_cost + judge_cost, 8),
                     "results_without_price": sum(1 for r in finished if not r.cost_known)},
        "attempts": {"total": sum(r.attempts for r in finished),
                     "retried_results": sum(1 for r in finished if r.attempts > 1)},
        "cache": {"hits": sum(1 for r in finished if r.cached)},
        "errors": dict(Counter(r.error_type or "error" for r in failed)),
        "created_at": exp.created_at.isoformat() if exp.created_at else None,
        **timing(exp, rows),
        "error": exp.error,
    }
    if by:
        report["by"] = breakdown(rows, by)
    return report


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _speed(items: int, start: datetime | None, end: datetime | None) -> tuple[float | None,
                                                                              float | None]:
    """(seconds from start to end, items per second), None where unknown."""
    if start is None or end is None:
        return None, None
    seconds = max(0.0, (end - start).total_seconds())
    return round(seconds, 3), (round(items / seconds, 3) if seconds else None)


def timing(exp: Experiment, rows: Sequence[ReportRow]) -> dict[str, Any]:
    """When the experiment ran, from its first start to its finish (the whole span, over
    every run of it: a resume or rerun included), and the last re-run's own span.

    started_at: the first start; finished_at: the last finish; wall_time_s: from one to
    the other; items_per_s: finished (item, repeat)s (done + failed) over wall_time_s.
    last_run: None if the experiment was started once; after a resume or a rerun, its
    started_at (the restart), wall_time_s (restart to finish), items (the (item, repeat)s
    it ran: Results written since the restart, done or failed) and items_per_s."""
    first = exp.first_started_at or exp.started_at
    finished = [r for r in rows if r.status in (ResultStatus.OK, ResultStatus.ERROR)]
    wall, rate = _speed(len(finished), first, exp.finished_at)
    out: dict[str, Any] = {"started_at": _iso(first), "finished_at": _iso(exp.finished_at),
                           "wall_time_s": wall, "items_per_s": rate, "last_run": None}
    restart = exp.started_at
    if restart is not None and first is not None and restart > first:
        ran = sum(1 for r in finished if r.updated_at is not None and r.updated_at >= restart)
        run_wall, run_rate = _speed(ran, restart, exp.finished_at)
        out["last_run"] = {"started_at": _iso(restart), "wall_time_s": run_wall,
                           "items": ran, "items_per_s": run_rate}
    return out
