"""Online reports: an evaluator's scores per time window, with drift against a baseline.

Windows are aligned to multiples of window_s seconds since the UTC epoch and keyed on
Score.subject_at (when the production run happened). `since` is rounded down to a window
boundary, so every reported window is whole except, possibly, the last one (cut at
`until`). Windows without any Score are omitted, and a window lists only the scorers
that have Scores in it; a scorer whose Scores are all "could not score" appears with
n=0 and mean None. The aggregation runs in SQL (models.aggregates).
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
from models.tables import utcnow
from scheduler.errors import InputError
from scheduler.reports.stats import differs, mean_ci_from_sums, variance_from_sums

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
            "variance": variance_from_sums(m.n, m.total, m.total_sq)}


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


def _drifted(window: dict[str, Any], base: dict[str, Any] | None) -> bool:
    """True when the window mean lies outside the baseline's 95% interval for a window of
    its size (Welch: both the baseline's and the window's noise count; needs a baseline
    of n >= 2). Comparing with the baseline mean's own CI alone would flag most windows
    of a large, stable baseline."""
    if window["mean"] is None or base is None or base["variance"] is None:
        return False
    return differs(window["n"], window["mean"], window["variance"],
                   base["n"], base["mean"], base["variance"])


def online_report(
    name: str,
    *,
    window_s: int = 3600,
    since: datetime | None = None,
    until: datetime | None = None,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Everything `evalq online report --json` prints for the online evaluator `name`.

    since defaults to 24 h before now and is rounded down to a window boundary; until
    defaults to now (exclusive). Naive datetimes are taken as UTC. "baseline" is None
    when none was asked for; a window scorer's "drift" is True only when that scorer has
    a baseline interval and the window mean lies outside it.
    """
    if window_s < 1:
        raise InputError(f"the window must be at least 1 second, not {window_s}")
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
        summary["drift"] = _drifted(summary, (base or {}).get(label))
        window["scorers"][label] = {
            "n": summary["n"], "n_unscored": summary["n_unscored"],
            **{k: _round(summary[k]) for k in ("mean", "low", "high", "pass_rate")},
            "drift": summary["drift"],
        }

    return {
        "evaluator": name,
        "window_s": window_s,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "baseline": None if base is None else {
            label: {"mean": _round(s["mean"]), "low": _round(s["low"]),
                    "high": _round(s["high"]), "n": s["n"], "source": s["source"]}
            for label, s in base.items()
        },
        "windows": [windows[b] for b in sorted(windows)],
    }
