"""Helpers of the reliability suite: datasets, exact counts read by SQL, waiting.

Every assertion here is about correctness (how many rows, which statuses), never about
speed: the machine is small and shared, so waits are generous.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from models.db import session_scope
from tests.support import WorkerProcess

SCORERS = ["exact_match", "contains"]


def worker_env(broker_url: str, database_url: str, **settings: object) -> dict[str, str]:
    """EVALQ_* variables for a worker (and the test process): keyword names are settings
    without the prefix, e.g. visibility_timeout_s=10."""
    env = {"EVALQ_BROKER_URL": broker_url, "EVALQ_DATABASE_URL": database_url,
           "EVALQ_POLL_INTERVAL_S": "0.2", "EVALQ_RETRY_INITIAL_S": "0.05",
           "EVALQ_RETRY_MAX_S": "1"}
    env.update({f"EVALQ_{key.upper()}": str(value) for key, value in settings.items()})
    return env


class Workers:
    """Worker subprocesses started by one test; teardown kills what is still running."""

    def __init__(self) -> None:
        self.started: list[WorkerProcess] = []

    def start(self, env: dict[str, str], *, name: str, concurrency: int,
              extra: list[str] | None = None, extra_env: dict[str, str] | None = None
              ) -> WorkerProcess:
        worker = WorkerProcess.start({**env, **(extra_env or {})}, name=name,
                                     concurrency=concurrency, extra=extra, timeout=120)
        self.started.append(worker)
        return worker

    def reap(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.stop(signal.SIGKILL, timeout=30)


def items_per_task() -> int:
    """(item, repeat)s per task: EVALQ_CHUNK_SIZE where tasks are chunked, else 1."""
    from models.settings import get_settings

    return int(getattr(get_settings(), "chunk_size", 1))


def slots_for(items_in_flight: int) -> int:
    """Worker pool slots (tasks at once) that keep about this many items in flight."""
    return max(2, -(-items_in_flight // items_per_task()))


def item_text(tag: str, i: int) -> str:
    """The input of case i (zero-padded: no input is a prefix of another)."""
    return f"{tag} item {i:05d}"


def write_dataset(tmp_path: Path, n: int, tag: str | None = None) -> tuple[Path, str]:
    """A JSONL dataset of n cases whose expected answer is the input (the fake model
    echoes it, so every scorer passes); returns (path, tag)."""
    tag = tag or uuid.uuid4().hex[:8]
    path = tmp_path / f"rel-{tag}.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            text = item_text(tag, i)
            fh.write(json.dumps({"id": f"{tag}-{i}", "input": text, "expected": text}) + "\n")
    return path, tag


@dataclass(frozen=True)
class Counts:
    """What the database holds for one experiment, counted by SQL."""

    results: int
    distinct_keys: int
    ok: int
    error: int
    scores: int
    scores_by_scorer: dict[str, int]
    max_scores_per_result_scorer: int
    n_done: int
    n_failed: int
    total_items: int
    status: str


def sql_counts(experiment_id: int) -> Counts:
    """Rows of the experiment, counted in the database (not through the ORM's view)."""
    params = {"e": experiment_id}
    with session_scope() as s:
        def one(sql: str) -> Any:
            return s.execute(sa.text(sql), params).scalar_one()

        results = one("SELECT count(*) FROM result WHERE experiment_id = :e")
        distinct = one("SELECT count(*) FROM (SELECT DISTINCT item_id, repeat FROM result "
                       "WHERE experiment_id = :e) k")
        ok = one("SELECT count(*) FROM result WHERE experiment_id = :e AND status = 'ok'")
        error = one("SELECT count(*) FROM result WHERE experiment_id = :e AND status = 'error'")
        scores = one("SELECT count(*) FROM score WHERE experiment_id = :e")
        by_scorer = dict(s.execute(sa.text(
            "SELECT scorer, count(*) FROM score WHERE experiment_id = :e GROUP BY scorer"),
            params).all())
        most = one("SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM score "
                   "WHERE experiment_id = :e GROUP BY subject_id, scorer) per")
        exp = s.execute(sa.text("SELECT n_done, n_failed, total_items, status FROM experiment "
                                "WHERE id = :e"), params).one()
    return Counts(results, distinct, ok, error, scores, by_scorer, most,
                  exp.n_done, exp.n_failed, exp.total_items, str(exp.status))


def stored_results(experiment_id: int) -> int:
    with session_scope() as s:
        return int(s.execute(sa.text("SELECT count(*) FROM result WHERE experiment_id = :e"),
                             {"e": experiment_id}).scalar_one())


def _task_pairs(message: dict[str, Any]) -> tuple[int, list[tuple[int, int]]]:
    """(experiment id, [(item id, repeat)]) of an evalq.run_item(s) message as kombu's
    Redis transport stores it."""
    raw = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    args = json.loads(raw)[0]
    if message["headers"]["task"] == "evalq.run_items":
        return int(args[0]), [(int(i), int(r)) for i, r in args[1]]
    return int(args[0]), [(int(args[1]), int(args[2]))]


def broker_pairs(client: Any, experiment_id: int, queue: str = "evalq.offline"
                 ) -> set[tuple[int, int]]:
    """The (item, repeat)s of an experiment that some message in Redis still carries:
    queued, or taken by a worker and not acknowledged (kombu's unacked hash)."""
    messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    messages += [json.loads(v)[0] for v in client.hvals("unacked")]
    pairs: set[tuple[int, int]] = set()
    for message in messages:
        exp, carried = _task_pairs(message)
        if exp == experiment_id:
            pairs.update(carried)
    return pairs


def result_pairs(experiment_id: int) -> set[tuple[int, int]]:
    with session_scope() as s:
        rows = s.execute(sa.text("SELECT item_id, repeat FROM result WHERE experiment_id = :e"),
                         {"e": experiment_id}).all()
    return {(r[0], r[1]) for r in rows}


def all_pairs(experiment_id: int) -> set[tuple[int, int]]:
    with session_scope() as s:
        exp = s.execute(sa.text("SELECT dataset_id, repeats FROM experiment WHERE id = :e"),
                        {"e": experiment_id}).one()
        items = s.execute(sa.text("SELECT id FROM dataset_item WHERE dataset_id = :d"),
                          {"d": exp.dataset_id}).scalars().all()
    return {(i, r) for i in items for r in range(exp.repeats)}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy (returning it); fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def wait_stable(read: Callable[[], Any], quiet_s: float, timeout: float) -> Any:
    """The value of read() once it stayed unchanged for quiet_s seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"value kept changing for {timeout} s (last {last!r})")


def assert_exact(experiment_id: int, total: int, scorers: list[str] = SCORERS) -> Counts:
    """The experiment is completed with exactly one Result per (item, repeat), one Score
    per (ok Result, scorer), counters equal to the rows, and a report that agrees."""
    from scheduler import experiment_report

    c = sql_counts(experiment_id)
    assert c.status == "completed", c
    assert c.results == c.distinct_keys == c.total_items == total, c
    assert c.ok + c.error == total, c
    assert (c.n_done, c.n_failed) == (c.ok, c.error), c
    assert c.scores == c.ok * len(scorers), c
    assert c.scores_by_scorer == (dict.fromkeys(scorers, c.ok) if c.ok else {}), c
    assert c.max_scores_per_result_scorer <= 1, c
    report = experiment_report(experiment_id)
    assert report["status"] == "completed"
    expected = {"total": total, "done": c.ok, "failed": c.error, "pending": 0}
    assert {k: report["counts"].get(k) for k in expected} == expected, report["counts"]
    assert not any(v for k, v in report["counts"].items() if k not in expected), report["counts"]
    for label in scorers if c.ok else []:
        stats = report["scorers"][label]
        assert stats["n_scored"] + stats["n_unscored"] == c.scores_by_scorer[label], stats
        assert stats["n_failed_items"] == c.error, stats
    return c


def held_by(name: str, task: str = "evalq.run_items") -> list[Any]:
    """What the running leases of the worker started as `name` (Workers.start) carry: for
    evalq.run_items the (item, repeat)s, for evalq.score_runs the claim ids. Its heartbeat
    name is its Celery node name ("NAME-TESTPID@host"), ":" and its pid."""
    import os

    with session_scope() as s:
        rows = s.execute(sa.text(
            "SELECT task_args FROM task_lease WHERE state = 'running' AND task = :t "
            "AND owner LIKE :o"), {"t": task, "o": f"{name}-{os.getpid()}@%"}).scalars().all()
    carried: list[Any] = []
    for args in rows:
        if task == "evalq.run_items":
            carried += [(int(i), int(r)) for i, r in args[1]]
        else:
            carried += [int(c) for c in args[0]]
    return carried


def report_recovery(test: str, broker: str, seconds: float, **details: Any) -> None:
    """Print how long a recovery took; with BENCH_RECOVERY_RESULTS=path also append it
    as a JSON line there (`python -m bench.recovery` collects them for the README; not an
    EVALQ_ variable, which tests/conftest.py clears)."""
    import os

    print(f"\n{test} [{broker}]: recovered in {seconds:.1f} s {details}")
    path = os.environ.get("BENCH_RECOVERY_RESULTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"test": test, "broker": broker, "seconds": round(seconds, 2),
                                 **details}) + "\n")
