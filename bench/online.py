"""Online benchmark: a production-run table with 1,000,000 rows in PostgreSQL; the time of
one tick claiming and enqueueing a batch of 1,000, and of the windowed report over 24 h.

    python -m bench.online [--runs 1000000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from bench.procs import (
    PG_ADMIN,
    REPO,
    RedisServer,
    commit,
    create_pg_database,
    drop_pg_database,
    machine,
)
from models.db import dispose_engines, get_engine
from models.migrate import upgrade
from models.settings import reset_settings
from scheduler.evaluators import add_evaluator
from scheduler.reports.evaluator import online_report
from workers.celery_app import sync_broker_url
from workers.online.tick import tick_and_enqueue
from workers.tasks import score_runs

FILL_RUNS = """
INSERT INTO production_run (source, external_id, created_at, ingested_at, input, output,
                            status, meta)
SELECT 'bench', 'run-' || g, now() - interval '24 hours' + g * (interval '86400 seconds' / :n),
       now() - interval '1 minute', to_jsonb('question ' || g), to_jsonb('answer ' || g),
       'COMPLETE', jsonb_build_object('env', CASE WHEN g % 2 = 0 THEN 'prod' ELSE 'dev' END)
FROM generate_series(1, :n) AS g
"""
FILL_SCORES = """
INSERT INTO score (subject_type, subject_id, evaluator_id, scorer, scorer_version, value,
                   passed, judge_cost_usd, judge_tokens, created_at, subject_at)
SELECT 'run', r.id, :ev, 'contains', '1', (r.id % 10) / 10.0, r.id % 10 >= 5, 0, 0, now(),
       r.created_at
FROM production_run r
"""
# What scoring those runs' claims would have added to the rollup (the same statement as the
# backfill of migration 0008).
FILL_ROLLUP = """
INSERT INTO score_rollup (evaluator_id, scorer, bucket, n, n_unscored, total, total_sq,
                          n_passed)
SELECT evaluator_id, scorer, (CAST(floor(EXTRACT(EPOCH FROM subject_at)) AS BIGINT) / 60) * 60,
       count(value), count(*) - count(value), coalesce(sum(value), 0.0),
       coalesce(sum(value * value), 0.0),
       coalesce(sum(CASE WHEN value IS NOT NULL AND passed THEN 1 ELSE 0 END), 0)
FROM score WHERE evaluator_id = :ev
GROUP BY 1, 2, 3
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="timed ticks and reports")
    args = parser.parse_args()
    redis = RedisServer.start()
    db_url = create_pg_database(PG_ADMIN)
    os.environ.update(EVALQ_DATABASE_URL=db_url, EVALQ_BROKER_URL=redis.url,
                      EVALQ_INGEST_SETTLE_S="0")
    reset_settings()  # the settings were read at import (workers.celery_app)
    dispose_engines()
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), **commit(),
                               "machine": machine(),
                               "runs": args.runs, "batch": args.batch}
    try:
        results.update(measure(args))
    finally:
        dispose_engines()
        drop_pg_database(PG_ADMIN, db_url)
        redis.stop()
    print(json.dumps(results, indent=1))
    out = REPO / "bench" / "results" / "online.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written to {out.relative_to(REPO)}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    upgrade()
    sync_broker_url()
    engine = get_engine()
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text(FILL_RUNS), {"n": args.runs})
        conn.exec_driver_sql("ANALYZE production_run")
    fill_s = time.perf_counter() - t0
    add_evaluator("bench", scorers=[{"type": "contains", "value": "answer"}],
                  sample_rate=0.5, batch_size=args.batch, backfill_since="25h")
    ticks = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        claimed = tick_and_enqueue(score_runs, force=True)
        ticks.append((time.perf_counter() - t) * 1000)
        assert claimed == args.batch, claimed
    with engine.begin() as conn:
        ev_id = conn.exec_driver_sql("SELECT id FROM online_evaluator").scalar_one()
        conn.execute(sa.text(FILL_SCORES), {"ev": ev_id})
        conn.execute(sa.text(FILL_ROLLUP), {"ev": ev_id})
        conn.exec_driver_sql("ANALYZE score")
        conn.exec_driver_sql("ANALYZE score_rollup")
    reports = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        data = online_report("bench", window_s=3600, since=None)
        reports.append((time.perf_counter() - t) * 1000)
    scored = sum(s["n"] for w in data["windows"] for s in w["scorers"].values())
    return {"fill_runs_s": round(fill_s, 2), "tick_claim_enqueue_ms": [round(x, 1) for x in ticks],
            "tick_median_ms": round(statistics.median(ticks), 1),
            "report_24h_ms": [round(x, 1) for x in reports],
            "report_median_ms": round(statistics.median(reports), 1),
            "report_windows": len(data["windows"]), "report_scores": scored}


if __name__ == "__main__":
    main()
