"""Online evaluators over time: windowed reports, drift against a baseline, and alerts.

Database tests run on SQLite and PostgreSQL (the `db_url` fixture); webhooks go to a
real HTTP server on a free loopback port. Synthetic scores are drawn from a seeded
random in antithetic pairs (mean + d, mean - d), so each group's sample mean is exactly
its target and the drift flags do not depend on the luck of the seed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlmodel import select

from models.aggregates import add_to_rollup
from models.crud import record_item_outcome, upsert_scores
from models.db import session_scope
from models.tables import OnlineAlert, OnlineEvaluator, ProductionRun, ScoreCreate
from scheduler.errors import InputError
from scheduler.reports.evaluator import Baseline, online_report
from scheduler.reports.stats import mean_ci, mean_ci_from_sums, t_critical
from tests.factories import make_experiment, result_in, score_in
from tests.support import EnvPatch, free_port
from workers.online.alerts import check_alerts

T0 = datetime(2026, 1, 5, tzinfo=UTC)  # on an hour (and day) boundary of the epoch
HOUR = timedelta(hours=1)

# --- factories ------------------------------------------------------------------------


def make_evaluator(name: str = "support-bot", **fields: Any) -> int:
    """A stored OnlineEvaluator; returns its id."""
    with session_scope() as session:
        evaluator = OnlineEvaluator(name=name, scorers=[], **fields)
        session.add(evaluator)
        session.flush()
        assert evaluator.id is not None
        return evaluator.id


def add_scores(evaluator_id: int, rows: Iterable[tuple[datetime, str, float | None]]) -> None:
    """One ProductionRun per (time, scorer, value) and its online Score (None: unscored)."""
    rows = list(rows)
    with session_scope() as session:
        runs = [ProductionRun(source="test", external_id=uuid.uuid4().hex, created_at=at)
                for at, _, _ in rows]
        session.add_all(runs)
        session.flush()
        upsert_scores(session=session, scores_in=[
            ScoreCreate(**{
             "subject_type": "run", "subject_id": run.id, "evaluator_id": evaluator_id,
             "subject_at": at, "scorer": label, "scorer_version": "1", "value": value,
             "passed": None if value is None else value >= 0.7, "explanation": None,
             "error": "judge answer unparseable" if value is None else None, "meta": None,
             "judge_model": None, "judge_cost_usd": 0.0, "judge_tokens": 0,
             "judge_latency_ms": None})
            for run, (at, label, value) in zip(runs, rows, strict=True)
        ])
        for at, label, value in rows:  # as scoring a claim does when it closes the claim
            add_to_rollup(session=session, evaluator_id=evaluator_id, subject_at=at,
                          scores=[(label, value, None if value is None else value >= 0.7)])


def paired(rng: random.Random, mean: float, pairs: int, spread: float = 0.15) -> list[float]:
    """2 * pairs values in [mean - spread, mean + spread] whose mean is `mean`."""
    values: list[float] = []
    for _ in range(pairs):
        d = rng.uniform(0, spread)
        values += [mean + d, mean - d]
    rng.shuffle(values)
    return values


def spread_over(start: datetime, span: timedelta, label: str,
                values: list[float | None]) -> list[tuple[datetime, str, float | None]]:
    """`values` at evenly spaced times in [start, start + span)."""
    step = span / len(values)
    return [(start + i * step, label, v) for i, v in enumerate(values)]


class Webhook:
    """A real HTTP server recording JSON POST bodies and answering scripted statuses
    (200 once the script is used up)."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.statuses = deque(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    hook.bodies.append(body)
                    status = hook.statuses.popleft() if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fast_retries(db_url: str) -> Iterator[str]:
    """The default database of db_url, with webhook retries backing off in milliseconds."""
    with EnvPatch(EVALQ_RETRY_INITIAL_S="0.01", EVALQ_RETRY_MAX_S="0.05"):
        yield db_url


# --- stats ----------------------------------------------------------------------------


def test_mean_ci_matches_hand_computed_values() -> None:
    # mean 3, sd sqrt(2.5) = 1.5811, t(4) = 2.7764: half-width 2.7764 * 1.5811 / sqrt(5)
    mean, low, high = mean_ci([1, 2, 3, 4, 5])
    assert mean == 3
    assert low == pytest.approx(3 - 1.9632, abs=1e-4)
    assert high == pytest.approx(3 + 1.9632, abs=1e-4)
    # [0, 1]: mean 0.5, sd 0.7071, t(1) = 12.7062: half-width 6.3531
    assert mean_ci([0.0, 1.0]) == pytest.approx((0.5, 0.5 - 6.3531, 0.5 + 6.3531), abs=1e-4)


def test_mean_ci_edge_cases() -> None:
    assert mean_ci([]) == (None, None, None)
    assert mean_ci([0.7]) == (0.7, None, None)  # one value: no interval
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="0.95 only"):
        mean_ci([1, 2], confidence=0.9)


def test_t_critical_table_and_large_samples() -> None:
    assert t_critical(1) == 12.7062
    assert t_critical(4) == 2.7764
    assert t_critical(30) == 2.0423
    assert t_critical(40) == pytest.approx(2.0211, abs=1e-4)
    assert t_critical(120) == pytest.approx(1.9799, abs=1e-4)
    assert t_critical(10**6) == pytest.approx(1.96, abs=1e-3)
    assert t_critical(31) < t_critical(30)


def test_mean_ci_from_sums_agrees_with_mean_ci() -> None:
    values = paired(random.Random(3), 0.8, 500)
    expected = mean_ci(values)
    got = mean_ci_from_sums(len(values), sum(values), sum(v * v for v in values))
    assert got == pytest.approx(expected, abs=1e-9)
    assert mean_ci_from_sums(0, 0.0, 0.0) == (None, None, None)
    assert mean_ci_from_sums(1, 0.4, 0.16) == (0.4, None, None)


# --- online_report --------------------------------------------------------------------


def test_report_windows_drift_and_baseline_period(db_url: str) -> None:
    rng = random.Random(20260105)
    ev = make_evaluator()
    other = make_evaluator("other-bot")
    add_scores(ev, spread_over(T0 - 24 * HOUR, 24 * HOUR, "relevance", paired(rng, 0.8, 100)))
    means = {0: 0.8, 1: 0.8, 2: 0.8, 3: 0.5, 5: 0.8}  # hour 4 has no scores at all
    values = {h: paired(rng, m, 15) for h, m in means.items()}
    for hour, vals in values.items():
        add_scores(ev, spread_over(T0 + hour * HOUR, HOUR, "relevance", list(vals)))
    add_scores(ev, spread_over(T0 + HOUR, HOUR, "relevance", [None, None]))  # unscored
    add_scores(ev, spread_over(T0 + 2 * HOUR, HOUR, "tone", [0.2, 0.3]))  # no baseline
    add_scores(other, spread_over(T0 + 3 * HOUR, HOUR, "relevance", [0.1] * 50))

    report = online_report("support-bot", since=T0, until=T0 + 6 * HOUR,
                           baseline=Baseline(since=T0 - 24 * HOUR))  # until: T0

    assert report["evaluator"] == "support-bot"
    assert report["window_s"] == 3600
    assert report["since"] == T0.isoformat()
    assert report["until"] == (T0 + 6 * HOUR).isoformat()
    base = report["baseline"]["relevance"]
    assert base["n"] == 200
    assert base["source"] == f"period:{(T0 - 24 * HOUR).isoformat()}/{T0.isoformat()}"
    assert base["low"] < 0.8 < base["high"] and base["mean"] == pytest.approx(0.8)
    assert set(report["baseline"]) == {"relevance"}

    windows = report["windows"]
    assert [w["start"] for w in windows] == [(T0 + h * HOUR).isoformat() for h in means]
    assert [w["end"] for w in windows] == [(T0 + (h + 1) * HOUR).isoformat() for h in means]
    drift = [w["scorers"]["relevance"]["drift"] for w in windows]
    assert drift == [False, False, False, True, False]
    assert all(w["scorers"]["relevance"]["drift_tested"] for w in windows)
    assert {w["scorers"]["relevance"]["drift_method"] for w in windows} == {"prediction_t"}
    tone = windows[2]["scorers"]["tone"]
    assert tone["drift"] is None and tone["drift_tested"] is False  # no baseline for "tone"
    assert tone["drift_note"] == "no baseline for this scorer"
    assert report["drift_test"] == {"min_n": 10, "alpha": 0.05, "binary": "fisher_exact",
                                    "other": "prediction_t"}
    assert [w["scorers"]["relevance"]["n"] for w in windows] == [30] * 5
    assert [w["scorers"]["relevance"]["n_unscored"] for w in windows] == [0, 2, 0, 0, 0]

    dropped = windows[3]["scorers"]["relevance"]
    mean, low, high = mean_ci(values[3])
    assert (dropped["mean"], dropped["low"], dropped["high"]) == pytest.approx(
        (mean, low, high), abs=1e-6)
    assert dropped["pass_rate"] == pytest.approx(
        sum(v >= 0.7 for v in values[3]) / 30, abs=1e-6)
    assert json.loads(json.dumps(report)) == report  # JSON-able as is

    half = online_report("support-bot", since=T0, until=T0 + 6 * HOUR,
                         baseline=Baseline(since=T0 - 24 * HOUR, until=T0 - 12 * HOUR))
    assert half["baseline"]["relevance"]["n"] == 100


def test_report_baseline_from_offline_experiment(db_url: str) -> None:
    rng = random.Random(7)
    offline = paired(rng, 0.8, 20)
    exp_id, item_ids = make_experiment(len(offline), name="golden")
    with session_scope() as session:
        for item_id, value in zip(item_ids, offline, strict=True):
            record_item_outcome(session=session, result_in=result_in(exp_id, item_id),
                                scores_in=[score_in("relevance", value)])
    ev = make_evaluator()
    add_scores(ev, spread_over(T0, HOUR, "relevance", paired(rng, 0.8, 10)))
    add_scores(ev, spread_over(T0 + HOUR, HOUR, "relevance", paired(rng, 0.5, 10)))

    report = online_report("support-bot", since=T0, until=T0 + 2 * HOUR,
                           baseline=Baseline(experiment_id=exp_id))

    base = report["baseline"]["relevance"]
    assert base["n"] == 40 and base["source"] == f"experiment:{exp_id}"
    _, low, high = mean_ci(offline)
    assert (base["low"], base["high"]) == pytest.approx((low, high), abs=1e-6)
    assert [w["scorers"]["relevance"]["drift"] for w in report["windows"]] == [False, True]

    with pytest.raises(InputError, match="no experiment with id 999999"):
        online_report("support-bot", since=T0, until=T0 + HOUR,
                      baseline=Baseline(experiment_id=999999))


def test_report_windows_are_aligned_to_the_epoch(db_url: str) -> None:
    ev = make_evaluator()
    add_scores(ev, [(T0 - timedelta(seconds=1), "relevance", 0.0),  # before since
                    (T0, "relevance", 1.0),
                    (T0 + timedelta(minutes=50), "relevance", 0.5),
                    (T0 + timedelta(minutes=119, seconds=59), "relevance", 0.0),
                    (T0 + 2 * HOUR, "relevance", 1.0),
                    (T0 + timedelta(hours=5, minutes=30), "relevance", 1.0)])  # at until
    # since 20 min after a boundary: rounded down to T0; windows of 2 h.
    report = online_report("support-bot", window_s=7200, since=T0 + timedelta(minutes=20),
                           until=T0 + timedelta(hours=5, minutes=30))
    assert report["since"] == T0.isoformat()
    assert report["baseline"] is None
    starts = [datetime.fromisoformat(w["start"]) for w in report["windows"]]
    assert starts == [T0, T0 + 2 * HOUR]  # the 4 h window has no scores: omitted
    assert all(int(s.timestamp()) % 7200 == 0 for s in starts)
    first = report["windows"][0]["scorers"]["relevance"]
    assert first["n"] == 3 and first["mean"] == pytest.approx(0.5)
    assert first["drift"] is None and first["drift_tested"] is False  # no baseline
    assert report["windows"][1]["scorers"]["relevance"]["n"] == 1


def test_report_drift_of_pass_fail_scores_and_windows_with_too_few_runs(db_url: str) -> None:
    """0/1 scores against a 95% baseline: a window of all passes (variance 0) is not
    drift (Welch's test flagged it), one failure in 20 is not, 12 of 20 is; a window of
    5 runs is not tested under the default minimum of 10."""
    ev = make_evaluator()
    add_scores(ev, spread_over(T0 - 24 * HOUR, 24 * HOUR, "ok", [1.0] * 190 + [0.0] * 10))
    hours = {0: [1.0] * 20, 1: [1.0] * 19 + [0.0], 2: [1.0] * 12 + [0.0] * 8, 3: [0.0] * 5}
    for hour, vals in hours.items():
        add_scores(ev, spread_over(T0 + hour * HOUR, HOUR, "ok", vals))

    report = online_report("support-bot", since=T0, until=T0 + 4 * HOUR,
                           baseline=Baseline(since=T0 - 24 * HOUR))
    ok = [w["scorers"]["ok"] for w in report["windows"]]
    assert [s["drift"] for s in ok] == [False, False, True, None]
    assert [s["drift_tested"] for s in ok] == [True, True, True, False]
    assert [s["drift_method"] for s in ok] == ["fisher_exact"] * 3 + [None]
    assert ok[2]["drift_p"] < 0.05 < ok[1]["drift_p"]
    assert ok[3]["drift_note"] == "too few: 5 scored runs, fewer than 10"
    assert ok[0]["drift_note"] is None

    with EnvPatch(EVALQ_DRIFT_MIN_N="3"):
        lowered = online_report("support-bot", since=T0, until=T0 + 4 * HOUR,
                                baseline=Baseline(since=T0 - 24 * HOUR))
    assert lowered["drift_test"]["min_n"] == 3
    assert lowered["windows"][3]["scorers"]["ok"]["drift"] is True
    strict = online_report("support-bot", since=T0, until=T0 + 4 * HOUR, min_n=500,
                           baseline=Baseline(since=T0 - 24 * HOUR))
    note = strict["windows"][0]["scorers"]["ok"]["drift_note"]
    assert note == "baseline has 200 scored runs, fewer than 500"
    with pytest.raises(InputError, match="at least 1 scored run"):
        online_report("support-bot", since=T0, until=T0 + HOUR, min_n=0)


def test_report_errors_name_the_next_step(db_url: str) -> None:
    with pytest.raises(InputError, match="no online evaluator named 'nope'; `evalq online list`"):
        online_report("nope")
    make_evaluator()
    with pytest.raises(InputError, match="at or after it ends"):
        online_report("support-bot", since=T0, until=T0 - HOUR)
    assert online_report("support-bot")["windows"] == []  # default: the last 24 h
    with pytest.raises(InputError, match="not both or neither"):
        Baseline()
    with pytest.raises(InputError, match="not both or neither"):
        Baseline(since=T0, experiment_id=1)


# --- alerts ---------------------------------------------------------------------------


def _alert_rows() -> list[OnlineAlert]:
    with session_scope() as session:
        return list(session.exec(select(OnlineAlert)).all())


def test_alert_fires_once_per_window_under_concurrency(fast_retries: str) -> None:
    hook = Webhook(statuses=[500])  # the first POST fails, the retry succeeds
    try:
        ev = make_evaluator(alert_threshold=0.7, alert_window_s=3600, webhook_url=hook.url)
        add_scores(ev, spread_over(T0, HOUR, "relevance", [0.5] * 12 + [None]))  # previous
        add_scores(ev, spread_over(T0 + HOUR, HOUR, "relevance", [0.9] * 4))  # current, fine
        now = T0 + HOUR + timedelta(minutes=10)
        barrier = threading.Barrier(5)

        def check(_: int) -> list[dict[str, Any]]:
            barrier.wait()
            return check_alerts(ev, now=now, wait=True)

        with ThreadPoolExecutor(5) as pool:
            fired = [a for alerts in pool.map(check, range(5)) for a in alerts]

        assert len(fired) == 1
        expected = {"evaluator": "support-bot", "scorer": "relevance",
                    "window_start": T0.isoformat(), "window_end": (T0 + HOUR).isoformat(),
                    "mean": 0.5, "threshold": 0.7, "n": 12}
        assert fired[0] == {**expected, "id": fired[0]["id"], "delivered": True,
                                 "error": None}
        assert hook.bodies == [expected, expected]  # one failed POST and its retry
        rows = _alert_rows()
        assert len(rows) == 1 and rows[0].delivered is True and rows[0].error is None
        assert check_alerts(ev, now=now + 5 * HOUR) == []  # a later check: nothing due
        assert check_alerts(ev, now=now) == []  # same windows again: already fired
        assert len(hook.bodies) == 2
    finally:
        hook.stop()


def test_alert_with_unreachable_webhook_is_logged_and_recorded(
    fast_retries: str, caplog: pytest.LogCaptureFixture
) -> None:
    ev = make_evaluator(alert_threshold=0.6, alert_window_s=600,
                        webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    add_scores(ev, [(T0 + timedelta(seconds=10 * i), "tone", 0.25 + 0.1 * (i % 2))
                    for i in range(10)])
    with caplog.at_level(logging.WARNING, logger="workers.online.alerts"):
        fired = check_alerts(ev, now=T0 + timedelta(minutes=5), wait=True)
    assert len(fired) == 1 and fired[0]["delivered"] is False
    assert fired[0]["error"].startswith("ConnectError")
    row = _alert_rows()[0]
    assert row.delivered is False and row.error == fired[0]["error"]
    assert row.mean == pytest.approx(0.3) and row.n == 10
    warning = next(r for r in caplog.records
                   if r.name == "workers.online.alerts" and r.levelno == logging.WARNING)
    message = warning.getMessage()
    for part in ("'support-bot'", "'tone'", "0.3000", "0.6000", "n=10", T0.isoformat()):
        assert part in message


def test_alert_4xx_is_not_retried_and_no_threshold_means_no_alert(fast_retries: str) -> None:
    hook = Webhook(statuses=[404])
    try:
        ev = make_evaluator(alert_threshold=0.9, webhook_url=hook.url)
        quiet = make_evaluator("quiet-bot")  # no alert_threshold
        add_scores(ev, [(T0, "relevance", 0.5)] * 10)
        add_scores(quiet, [(T0, "relevance", 0.0)] * 10)
        assert check_alerts(quiet, now=T0, wait=True) == []
        fired = check_alerts(ev, now=T0, wait=True)
        assert fired[0]["error"] == "webhook answered HTTP 404"
        assert len(hook.bodies) == 1
        with pytest.raises(LookupError, match="no online evaluator with id 999999"):
            check_alerts(999999)
    finally:
        hook.stop()


def test_alerts_wait_for_enough_scored_runs(db_url: str) -> None:
    """Below EVALQ_ALERT_MIN_N (10) scored runs a window fires no alert, however low its
    mean; the current window fires once it holds enough."""
    ev = make_evaluator(alert_threshold=0.7, alert_window_s=3600)
    now = T0 + timedelta(minutes=30)
    add_scores(ev, [(T0 + timedelta(minutes=i), "relevance", 0.0) for i in range(9)]
               + [(T0, "relevance", None)] * 3)  # unscored runs do not count
    assert check_alerts(ev, now=now) == []
    add_scores(ev, [(T0 + timedelta(minutes=20), "relevance", 0.1)])
    fired = check_alerts(ev, now=now)
    assert [(a["n"], a["delivered"]) for a in fired] == [(10, False)]
    assert fired[0]["mean"] == pytest.approx(0.01)

    lone = make_evaluator("lone-bot", alert_threshold=0.7, alert_window_s=3600)
    add_scores(lone, [(T0, "relevance", 0.0)])
    assert check_alerts(lone, now=now) == []
    with EnvPatch(EVALQ_ALERT_MIN_N="1"):
        assert [a["n"] for a in check_alerts(lone, now=now)] == [1]
