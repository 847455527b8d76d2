"""Threshold alerts of online evaluators: at most one per (evaluator, scorer, window).

check_alerts looks at the window (aligned to alert_window_s on the UTC epoch) that holds
`now` and at the completed window before it. A scorer with at least EVALQ_ALERT_MIN_N
scored runs there whose mean is below the evaluator's alert_threshold gets an OnlineAlert
row, inserted with ON CONFLICT DO
NOTHING: only the caller whose insert created the row logs the alert and posts the
webhook, so concurrent or repeated checks fire once. Delivery is at most once: if the
process dies between the insert and the POST, the row stays with delivered=False and no
error, and no later check posts it again.

Webhooks never hold up the caller (the online tick checks every evaluator in turn): each
alert's POST runs on a small thread pool of this process, and its outcome is recorded on
the alert row when it ends. Each POST has one total deadline, EVALQ_WEBHOOK_TIMEOUT_S,
however slowly the server answers; at most MAX_RESPONSE_BYTES of the answer are read;
redirects are not followed; the URL is never logged (it may hold a token), and the
HTTP libraries' log records lose their query strings (workers.runtime.logsafe).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from models.aggregates import (
    insert_alert,
    record_alert_delivery,
    to_utc,
    window_moments,
    window_start,
)
from models.db import session_scope
from models.settings import Settings, get_settings
from models.tables import OnlineEvaluator, utcnow
from workers.runtime.logsafe import http_url_problem, install_log_filters, scrub

log = logging.getLogger(__name__)
install_log_filters()  # httpx logs "HTTP Request: POST <url>" at INFO: no query string

WEBHOOK_ATTEMPTS = 3
MAX_RESPONSE_BYTES = 4096  # of a webhook's answer read before the connection is closed
DELIVERY_THREADS = 4


class WebhookDeadline(httpx.TimeoutException):
    """The webhook did not answer in full within EVALQ_WEBHOOK_TIMEOUT_S (a total
    deadline: a server sending one byte a second never resets it)."""


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
    return scrub(f"{type(exc).__name__}: {exc}")[:1000]


async def _post_once(client: httpx.AsyncClient, url: str, payload: dict[str, Any],
                     deadline_s: float) -> None:
    """One POST under one total deadline; reads at most MAX_RESPONSE_BYTES of the answer."""
    try:
        async with asyncio.timeout(deadline_s):
            response = await client.send(client.build_request("POST", url, json=payload),
                                         stream=True)
            try:
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= MAX_RESPONSE_BYTES:
                        break  # closing an unread response closes its connection
            finally:
                await response.aclose()
    except TimeoutError:
        raise WebhookDeadline(
            f"no complete answer within {deadline_s:g} s (EVALQ_WEBHOOK_TIMEOUT_S)"
        ) from None
    response.raise_for_status()


async def _post(url: str, payload: dict[str, Any], settings: Settings) -> None:
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(WEBHOOK_ATTEMPTS),
        wait=wait_exponential_jitter(initial=settings.retry_initial_s,
                                     max=settings.retry_max_s,
                                     jitter=settings.retry_initial_s),
        before_sleep=_log_before_sleep,
        reraise=True,
    )
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_s, trust_env=False,
                                 follow_redirects=False) as client:
        async for attempt in retrying:
            with attempt:
                await _post_once(client, url, payload, settings.webhook_timeout_s)


def post_webhook(url: str, payload: dict[str, Any], settings: Settings | None = None
                 ) -> str | None:
    """POST `payload` as JSON, retried with backoff; None on a 2xx, else the error text.

    Blocks the calling thread (which must not be running an event loop). Each of the
    WEBHOOK_ATTEMPTS requests has one total deadline, webhook_timeout_s, for connecting,
    sending and reading the answer; the backoff reuses the model-call settings
    (retry_initial_s, retry_max_s). Only http(s) URLs; proxies from the environment are
    ignored; redirects are not followed (a 3xx is an error).
    """
    settings = settings or get_settings()
    problem = http_url_problem(url)
    if problem is not None:
        return f"InvalidURL: the webhook URL is not usable: {problem}"
    try:
        asyncio.run(_post(url, payload, settings))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _describe(exc)
    return None


# --- background delivery --------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own
_pending: set[Future[str | None]] = set()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pending.clear()  # futures of a parent process never complete here
            _pool = (os.getpid(), ThreadPoolExecutor(DELIVERY_THREADS,
                                                     thread_name_prefix="evalq-webhook"))
        return _pool[1]


def _deliver(alert_id: int, name: str, scorer: str, start: datetime, url: str,
             payload: dict[str, Any], settings: Settings) -> str | None:
    """Post one alert and record the outcome on its row; returns the error, if any."""
    try:
        error = post_webhook(url, payload, settings)
    except Exception as exc:  # noqa: BLE001 - a delivery bug must still be recorded
        error = _describe(exc)
    if error is not None:
        log.error("online evaluator %r: the alert webhook for scorer %r, window %s was "
                  "not delivered: %s", name, scorer, start.isoformat(), error)
    with session_scope(settings.database_url) as session:
        record_alert_delivery(session=session, alert_id=alert_id,
                              delivered=error is None, error=error)
    return error


def _submit(*args: Any) -> Future[str | None]:
    future = _executor().submit(_deliver, *args)
    with _pool_lock:
        _pending.add(future)
    future.add_done_callback(_forget)
    return future


def _forget(future: Future[str | None]) -> None:
    with _pool_lock:
        _pending.discard(future)


def wait_for_deliveries(timeout: float | None = None) -> bool:
    """Wait for the webhook deliveries this process has started; True when none is left
    (False: some still run after `timeout` seconds)."""
    with _pool_lock:
        pending = set(_pending)
    if not pending:
        return True
    _, not_done = wait(pending, timeout=timeout)
    return not not_done


def _fire(
    evaluator_id: int, name: str, webhook_url: str | None, scorer: str, start: datetime,
    window_s: int, mean: float, threshold: float, n: int,
) -> tuple[dict[str, Any], Future[str | None] | None] | None:
    """Insert and log one alert and start its delivery; None when it had already fired."""
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
    alert = {"id": alert_id, **payload, "delivered": False, "error": None}
    if not webhook_url:
        return alert, None
    alert["delivered"] = None  # pending
    return alert, _submit(alert_id, name, scorer, start, webhook_url, payload, get_settings())


def check_alerts(evaluator_id: int, *, now: datetime | None = None, wait: bool = False
                 ) -> list[dict[str, Any]]:
    """Fire the alerts due for the evaluator's current and previous windows.

    Returns the alerts this call fired (those already fired by an earlier or concurrent
    call are not repeated): dicts with id, evaluator, scorer, window_start, window_end,
    mean, threshold, n, delivered and error. An evaluator without alert_threshold has none,
    and a window with fewer than EVALQ_ALERT_MIN_N scored runs (settings.alert_min_n) fires
    none: the mean of a handful of runs is mostly noise. The current window can still fire
    later, once enough runs are scored.

    Webhooks are posted in the background: `delivered` is None (pending) until the POST
    ends and its outcome is stored on the alert row. `wait=True` waits for them (at most
    WEBHOOK_ATTEMPTS deadlines and backoffs) and returns their outcome.
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
    min_n = max(1, get_settings().alert_min_n)
    fired: list[tuple[dict[str, Any], Future[str | None] | None]] = []
    for (bucket, scorer), m in sorted(moments.items()):
        if m.n < min_n or m.total / m.n >= threshold:
            continue
        start = datetime.fromtimestamp(bucket, UTC)
        one = _fire(evaluator_id, name, webhook_url, scorer, start, window_s,
                    m.total / m.n, threshold, m.n)
        if one is not None:
            fired.append(one)
    if wait:
        for alert, delivery in fired:
            if delivery is not None:
                alert["error"] = delivery.result()
                alert["delivered"] = alert["error"] is None
    return [alert for alert, _ in fired]
