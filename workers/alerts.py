"""Threshold alerts of online evaluators: at most one per (evaluator, scorer, window).

check_alerts looks at the window (aligned to alert_window_s on the UTC epoch) that holds
`now` and at the completed window before it. A scorer whose mean there is below the
evaluator's alert_threshold gets an OnlineAlert row, inserted with ON CONFLICT DO
NOTHING: only the caller whose insert created the row logs the alert and posts the
webhook, so concurrent or repeated checks fire once. Delivery is at most once: if the
process dies between the insert and the POST, the row stays with delivered=False and no
error, and no later check posts it again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from models.db import session_scope
from models.online_queries import (
    insert_alert,
    record_alert_delivery,
    to_utc,
    window_moments,
    window_start,
)
from models.settings import get_settings
from models.tables import OnlineEvaluator, utcnow

log = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = 3


def is_retryable(exc: BaseException) -> bool:
    """The one predicate for webhook posts: connection errors, timeouts, 5xx and 429 may
    succeed next time; other 4xx (and redirects) will not."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status >= 500 or status == 429
    return isinstance(exc, httpx.TransportError) and not isinstance(
        exc, httpx.UnsupportedProtocol
    )


def _log_before_sleep(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    sleep = state.next_action.sleep if state.next_action else 0.0
    log.info("alert webhook attempt %d failed (%s); retrying in %.2fs",
             state.attempt_number, _describe(exc), sleep)


def _describe(exc: BaseException | None) -> str:
    """A short error text that never contains the webhook URL (it may hold a secret)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"webhook answered HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"[:1000]


def post_webhook(url: str, payload: dict[str, Any]) -> str | None:
    """POST `payload` as JSON, retried with backoff; None on a 2xx, else the error text.

    The backoff reuses the model-call settings (retry_initial_s, retry_max_s); each
    request times out after webhook_timeout_s. Proxies from the environment are ignored.
    """
    settings = get_settings()
    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(WEBHOOK_ATTEMPTS),
        wait=wait_exponential_jitter(initial=settings.retry_initial_s,
                                     max=settings.retry_max_s,
                                     jitter=settings.retry_initial_s),
        before_sleep=_log_before_sleep,
        reraise=True,
    )
    try:
        with httpx.Client(timeout=settings.webhook_timeout_s, trust_env=False) as client:
            for attempt in retrying:
                with attempt:
                    client.post(url, json=payload).raise_for_status()
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _describe(exc)
    return None


def _fire(
    evaluator_id: int, name: str, webhook_url: str | None, scorer: str, start: datetime,
    window_s: int, mean: float, threshold: float, n: int,
) -> dict[str, Any] | None:
    """Insert, log and deliver one alert; None when it had already fired."""
    with session_scope() as session:
        alert_id = insert_alert(session=session, evaluator_id=evaluator_id, scorer=scorer,
                                window_start=start, mean=mean, threshold=threshold, n=n)
    if alert_id is None:
        return None
    end = start + timedelta(seconds=window_s)
    log.warning(
        "online evaluator %r: scorer %r averaged %.4f in window %s to %s, below the alert "
        "threshold %.4f (n=%d)", name, scorer, mean, start.isoformat(), end.isoformat(),
        threshold, n,
    )
    payload = {"evaluator": name, "scorer": scorer, "window_start": start.isoformat(),
               "window_end": end.isoformat(), "mean": mean, "threshold": threshold, "n": n}
    error: str | None = None
    if webhook_url:
        error = post_webhook(webhook_url, payload)
        if error is not None:
            log.error("online evaluator %r: the alert webhook for scorer %r, window %s was "
                      "not delivered after %d attempts: %s", name, scorer, start.isoformat(),
                      WEBHOOK_ATTEMPTS, error)
        with session_scope() as session:
            record_alert_delivery(session=session, alert_id=alert_id,
                                  delivered=error is None, error=error)
    return {"id": alert_id, **payload, "delivered": bool(webhook_url) and error is None,
            "error": error}


def check_alerts(evaluator_id: int, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Fire the alerts due for the evaluator's current and previous windows.

    Returns the alerts this call fired (those already fired by an earlier or concurrent
    call are not repeated): dicts with id, evaluator, scorer, window_start, window_end,
    mean, threshold, n, delivered and error. An evaluator without alert_threshold has none.
    """
    now = to_utc(now) if now is not None else utcnow()
    with session_scope() as session:
        evaluator = session.get(OnlineEvaluator, evaluator_id)
        if evaluator is None:
            raise LookupError(
                f"no online evaluator with id {evaluator_id}; `evalq online list` shows them"
            )
        threshold, window_s = evaluator.alert_threshold, evaluator.alert_window_s
        name, webhook_url = evaluator.name, evaluator.webhook_url
        if threshold is None:
            return []
        current = window_start(now, window_s)
        moments = window_moments(
            session=session, evaluator_id=evaluator_id, window_s=window_s,
            since=current - timedelta(seconds=window_s),
            until=current + timedelta(seconds=window_s),
        )
    fired = []
    for (bucket, scorer), m in sorted(moments.items()):
        if m.n < 1 or m.total / m.n >= threshold:
            continue
        start = datetime.fromtimestamp(bucket, UTC)
        alert = _fire(evaluator_id, name, webhook_url, scorer, start, window_s,
                      m.total / m.n, threshold, m.n)
        if alert is not None:
            fired.append(alert)
    return fired
