"""Online evaluators ("streams"): add, list, pause, resume, remove, and tick by hand.

In distributed mode Celery beat runs the tick (`celery -A workers beat`); `tick_now`
runs it from this process (embedded mode scores in-process; distributed mode enqueues).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from models.db import session_scope
from models.migrate import prepare_database
from models.settings import get_settings
from models.tables import OnlineAlert, OnlineClaim, OnlineEvaluator, Score, utcnow
from scheduler.checks import resolve_scorer_specs
from scheduler.errors import InputError
from workers.celery_app import sync_broker_url
from workers.errors import WorkerError
from workers.online.alerts import wait_for_deliveries
from workers.online.claimed_runs import score_claim
from workers.online.tick import tick, tick_and_enqueue
from workers.runtime.logsafe import http_url_problem, mask_url, strip_url
from workers.tasks import score_runs

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str | int | float) -> float:
    """Seconds of "90", "90s", "5m", "1h", "2d"."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise InputError(f"{text!r} is not a duration: use e.g. 30s, 5m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str | datetime) -> datetime:
    """An ISO 8601 time (UTC if no zone), or a duration ago ("2h" = two hours ago)."""
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if _DURATION.match(text):
        return utcnow() - timedelta(seconds=parse_duration(text))
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{text!r} is not a time: use ISO 8601 (2026-11-26T09:00:00Z) "
                         "or a duration ago (6h)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_filters(pairs: Sequence[str] | dict[str, Any] | None) -> dict[str, str]:
    """key=value filters: source, status, model, or any metadata key."""
    if pairs is None:
        return {}
    if isinstance(pairs, dict):
        return {str(k): str(v) for k, v in pairs.items()}
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"filter {pair!r} must look like key=value (e.g. environment=prod)")
        out[key.strip()] = value.strip()
    return out


def _public(ev: OnlineEvaluator) -> dict[str, Any]:
    return {
        "name": ev.name, "scorers": [s["label"] for s in ev.scorers or []],
        "sample_rate": ev.sample_rate, "every_s": ev.every_s, "batch_size": ev.batch_size,
        "filters": ev.filters or {}, "since": ev.since.isoformat(), "enabled": ev.enabled,
        "alert_threshold": ev.alert_threshold, "alert_window_s": ev.alert_window_s,
        "webhook_url": mask_url(ev.webhook_url) if ev.webhook_url else None,
        "last_tick_at": ev.last_tick_at.isoformat() if ev.last_tick_at else None,
    }


def _check_webhook(url: str | None) -> None:
    """Refuse a webhook URL that is not http(s) with a host (file://, not-a-url)."""
    if url is None:
        return
    problem = http_url_problem(url)
    if problem is None and len(url) > 1000:
        problem = "it is longer than 1000 characters"
    if problem is not None:
        raise InputError(f"--webhook {strip_url(url)!r} is refused: {problem}; give the http:// "
                         "or https:// URL of the endpoint, e.g. https://hooks.example/evalq")


def add_evaluator(
    name: str,
    *,
    scorers: Sequence[str | dict[str, Any]],
    sample_rate: float = 1.0,
    every: str | float = "60s",
    batch_size: int = 200,
    filters: Sequence[str] | dict[str, Any] | None = None,
    backfill_since: str | datetime | None = None,
    alert_threshold: float | None = None,
    alert_window: str | float = "1h",
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """Create an online evaluator. It scores runs created from now on (or from
    `backfill_since`), sampled deterministically, on its own schedule. A `webhook_url`
    must be http(s) with a host; it is stored as given (a token in it is the endpoint's
    secret) and listed with its password and query values masked."""
    if not name or len(name) > 200:
        raise InputError("an online evaluator needs a name of 1 to 200 characters")
    if not scorers:
        raise InputError("give at least one scorer (--scorer)")
    if not 0.0 < sample_rate <= 1.0:
        raise InputError(f"sample rate must be in (0, 1], got {sample_rate}")
    if batch_size < 1:
        raise InputError("batch size must be at least 1")
    if alert_threshold is not None and not 0.0 <= alert_threshold <= 1.0:
        raise InputError("alert threshold must be in [0, 1] (scores are in [0, 1])")
    _check_webhook(webhook_url)
    every_s = parse_duration(every)
    if every_s < 1:
        raise InputError("--every must be at least 1s")
    resolved = resolve_scorer_specs(scorers)
    now = utcnow()
    evaluator = OnlineEvaluator(
        name=name, scorers=[s.spec() for s in resolved], sample_rate=sample_rate,
        every_s=int(every_s), batch_size=batch_size, filters=parse_filters(filters) or None,
        since=parse_time(backfill_since) if backfill_since else now, enabled=True,
        next_due_at=now, alert_threshold=alert_threshold,
        alert_window_s=int(parse_duration(alert_window)), webhook_url=webhook_url,
    )
    prepare_database()
    with session_scope() as session:
        if session.exec(select(OnlineEvaluator).where(OnlineEvaluator.name == name)).first():
            raise InputError(f"an online evaluator named {name!r} exists already "
                             "(`evalq online remove` it first)")
        session.add(evaluator)
        session.flush()
        return _public(evaluator)


def list_evaluators() -> list[dict[str, Any]]:
    """Every online evaluator, oldest first."""
    prepare_database()
    with session_scope() as session:
        rows = session.exec(select(OnlineEvaluator).order_by(col(OnlineEvaluator.id))).all()
        return [_public(ev) for ev in rows]


def _get(session: Any, name: str) -> OnlineEvaluator:
    ev = session.exec(select(OnlineEvaluator).where(OnlineEvaluator.name == name)).first()
    if ev is None:
        raise InputError(f"no online evaluator named {name!r}; `evalq online list` shows them")
    return ev  # type: ignore[no-any-return]


def set_enabled(name: str, enabled: bool) -> dict[str, Any]:
    """Pause (False) or resume (True) an evaluator; a resumed one ticks at once."""
    with session_scope() as session:
        ev = _get(session, name)
        ev.enabled = enabled
        if enabled:
            ev.next_due_at = utcnow()
        session.add(ev)
        session.flush()
        return _public(ev)


def remove_evaluator(name: str) -> None:
    """Delete an evaluator with its claims, alerts and scores."""
    with session_scope() as session:
        ev = _get(session, name)
        for table, column in ((Score, Score.evaluator_id), (OnlineClaim, OnlineClaim.evaluator_id),
                              (OnlineAlert, OnlineAlert.evaluator_id)):
            session.execute(sa.delete(table).where(col(column) == ev.id))
        session.delete(ev)


def tick_now(name: str | None = None, *, force: bool = True) -> dict[str, Any]:
    """Run one tick from this process: embedded mode scores the claimed runs here,
    distributed mode enqueues them for the workers. Returns counts."""
    settings = get_settings()
    ids: list[int] | None = None
    if name is not None:
        with session_scope() as session:
            ev_id = _get(session, name).id
            assert ev_id is not None
            ids = [ev_id]
    pending: list[int] = []
    if settings.embedded:
        claims = tick(evaluator_ids=ids, force=force, enqueue=pending.append)
        scored = sum(score_claim(c) == "scored" for c in pending)
        wait_for_deliveries()  # alert webhooks post in the background: record them first
        return {"claimed": sum(len(c.claim_ids) for c in claims), "scored": scored}
    sync_broker_url()
    try:
        claimed = tick_and_enqueue(score_runs, evaluator_ids=ids, force=force)
    except WorkerError as exc:
        raise InputError(str(exc)) from None
    wait_for_deliveries()
    return {"claimed": claimed, "enqueued": True}
