"""Online reports: an evaluator's scores per time window, with drift against a baseline.

Windows are aligned to multiples of window_s seconds since the UTC epoch and keyed on
Score.subject_at (when the production run happened). `since` is rounded down to a window
boundary, so every reported window is whole except, possibly, the last one (cut at
`until`). Windows without any Score are omitted, and a window lists only the scorers
that have Scores in it; a scorer whose Scores are all "could not score" appears with
n=0 and mean None. The aggregation runs in SQL (models.aggregates).

Drift (scheduler.reports.stats.drift_test) is tested only when the window and the baseline
each hold at least EVALQ_DRIFT_MIN_N scored runs: 0/1 scores by Fisher's exact test,
others by a prediction interval built on the baseline's (floored) variance. Either holds
the false-alarm rate near or under 5% on a stable stream, for any pass rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from models.aggregates import (
    Moments,
    evaluator_by_name,
    scorer_moments,
    to_utc,
    window_moments,
    window_start,
)
from models.crud import get_experiment
from models.db import session_scope
from models.errors import NotFound
from models.settings import get_settings
from models.tables import utcnow
from scheduler.errors import InputError
from scheduler.reports.stats import (
    DRIFT_ALPHA,
    FISHER_EXACT,
    PREDICTION_T,
    Drift,
    drift_test,
    mean_ci_from_sums,
    variance_from_sums,
)

DEFAULT_LOOKBACK = timedelta(hours=24)


@dataclass(frozen=True)
class Baseline:
    """What window means are compared with: an offline experiment's Scores (matched on
    the scorer label), or the same evaluator's Scores over the period [since, until)."""

    since: datetime | None = None
    until: datetime | None = None  # None: up to the report's own since
    experiment_id: int | None = None

    def __post_init__(self) -> None:
        if (self.experiment_id is None) == (self.since is None):
            raise InputError(
                "a baseline is either an offline experiment or a period, not both or "
                "neither: give an experiment id, or a period start (since) and optional end"
            )
        if self.experiment_id is not None and self.until is not None:
            raise InputError(
                "a baseline period end (until) makes no sense with an experiment "
                "baseline: drop it, or give a period start instead of the experiment"
            )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _summary(m: Moments) -> dict[str, Any]:
    mean, low, high = mean_ci_from_sums(m.n, m.total, m.total_sq)
    if low is not None and high is not None:  # scores live in [0, 1]
        low, high = max(0.0, low), min(1.0, high)
    return {"n": m.n, "n_unscored": m.n_unscored, "mean": mean, "low": low, "high": high,
            "pass_rate": m.n_passed / m.n if m.n else None,
            "variance": variance_from_sums(m.n, m.total, m.total_sq), "moments": m}


def _baseline(
    baseline: Baseline, evaluator_id: int, report_since: datetime
) -> tuple[dict[str, dict[str, Any]], str]:
    """Per-scorer mean/CI of the baseline (unrounded), and a description of its source."""
    with session_scope() as session:
        if baseline.experiment_id is not None:
            try:
                get_experiment(session=session, experiment_id=baseline.experiment_id)
            except NotFound as exc:
                raise InputError(str(exc)) from None
            moments = scorer_moments(session=session, experiment_id=baseline.experiment_id)
            source = f"experiment:{baseline.experiment_id}"
        else:
            assert baseline.since is not None  # checked by Baseline
            since = to_utc(baseline.since)
            until = to_utc(baseline.until) if baseline.until is not None else report_since
            if since >= until:
                raise InputError(
                    f"the baseline period starts ({since.isoformat()}) at or after it ends "
                    f"({until.isoformat()}): give a baseline since earlier than its until"
                )
            moments = scorer_moments(session=session, evaluator_id=evaluator_id,
                                     since=since, until=until)
            source = f"period:{since.isoformat()}/{until.isoformat()}"
    return {label: _summary(m) for label, m in moments.items()}, source


def _drift(window: Moments, base: dict[str, Any] | None, min_n: int) -> Drift:
    """The window's drift against its scorer's baseline (drift_test); not tested without
    a baseline for that scorer or with too few scored runs on either side. Comparing
    with the baseline mean's own CI would flag most windows of a large, stable baseline,
    and Welch's test (the window's own variance) flags every window of identical scores."""
    if base is None:
        return Drift(None, reason="no baseline for this scorer")
    b: Moments = base["moments"]
    return drift_test(window.n, window.total, window.total_sq, b.n, b.total, b.total_sq,
                      min_n=min_n)


def online_report(
    name: str,
    *,
    window_s: int = 3600,
    since: datetime | None = None,
    until: datetime | None = None,
    baseline: Baseline | None = None,
    min_n: int | None = None,
) -> dict[str, Any]:
    """Everything `evalq online report --json` prints for the online evaluator `name`.

    since defaults to 24 h before now and is rounded down to a window boundary; until
    defaults to now (exclusive). Naive datetimes are taken as UTC. "baseline" is None
    when none was asked for. A window scorer's "drift" is True or False when drift was
    tested ("drift_tested", by "drift_method": fisher_exact or prediction_t; p-value in
    "drift_p" for fisher_exact) and None when it was not ("drift_note" says why: no
    baseline for the scorer, or fewer than min_n scored runs in the window or the
    baseline). min_n defaults to EVALQ_DRIFT_MIN_N; "drift_test" at the top describes
    the test.
    """
    if window_s < 1:
        raise InputError(f"the window must be at least 1 second, not {window_s}")
    min_n = get_settings().drift_min_n if min_n is None else min_n
    if min_n < 1:
        raise InputError(f"the drift minimum must be at least 1 scored run, not {min_n}")
    now = utcnow()
    until = to_utc(until) if until is not None else now
    since = window_start(to_utc(since) if since is not None else until - DEFAULT_LOOKBACK,
                         window_s)
    if since >= until:
        raise InputError(
            f"the report starts ({since.isoformat()}) at or after it ends "
            f"({until.isoformat()}): give a since earlier than until"
        )
    with session_scope() as session:
        evaluator = evaluator_by_name(session=session, name=name)
        if evaluator is None or evaluator.id is None:
            raise InputError(
                f"no online evaluator named {name!r}; `evalq online list` shows them"
            )
        evaluator_id = evaluator.id
        moments = window_moments(session=session, evaluator_id=evaluator_id,
                                 window_s=window_s, since=since, until=until)

    base: dict[str, dict[str, Any]] | None = None
    if baseline is not None:
        base, source = _baseline(baseline, evaluator_id, since)
        for summary in base.values():
            summary["source"] = source

    windows: dict[int, dict[str, Any]] = {}
    for (bucket, label), m in moments.items():
        start = datetime.fromtimestamp(bucket, UTC)
        window = windows.setdefault(bucket, {
            "start": start.isoformat(),
            "end": (start + timedelta(seconds=window_s)).isoformat(),
            "scorers": {},
        })
        summary = _summary(m)
        drift = _drift(m, (base or {}).get(label), min_n)
        window["scorers"][label] = {
            "n": summary["n"], "n_unscored": summary["n_unscored"],
            **{k: _round(summary[k]) for k in ("mean", "low", "high", "pass_rate")},
            "drift": drift.drifted, "drift_tested": drift.tested,
            "drift_method": drift.method, "drift_p": _round(drift.p_value),
            "drift_note": drift.reason,
        }

    return {
        "evaluator": name,
        "window_s": window_s,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "drift_test": {"min_n": min_n, "alpha": DRIFT_ALPHA,
                       "binary": FISHER_EXACT, "other": PREDICTION_T},
        "baseline": None if base is None else {
            label: {"mean": _round(s["mean"]), "low": _round(s["low"]),
                    "high": _round(s["high"]), "n": s["n"], "source": s["source"]}
            for label, s in base.items()
        },
        "windows": [windows[b] for b in sorted(windows)],
    }
