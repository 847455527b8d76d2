"""Storage on SQLite and PostgreSQL: migrations, idempotent upserts, exactly-once
finalization under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlmodel import col, func, select

from models.crud import record_item_outcome
from models.db import get_engine, session_scope
from models.errors import DatabaseNotMigrated
from models.migrate import ensure_migrated, head_revision, upgrade
from models.tables import Experiment, Result, Score
from tests.factories import make_experiment, result_in, score_in
from tests.support import EnvPatch


def _counts(experiment_id: int) -> tuple[int, int, Experiment]:
    with session_scope() as s:
        n_results = s.exec(select(func.count()).select_from(Result)
                           .where(Result.experiment_id == experiment_id)).one()
        n_scores = s.exec(select(func.count()).select_from(Score)
                          .where(Score.experiment_id == experiment_id)).one()
        exp = s.get(Experiment, experiment_id)
        assert exp is not None
        return n_results, n_scores, exp


def test_unmigrated_database_is_refused_with_next_step(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(DatabaseNotMigrated, match="evalq db upgrade"):
        ensure_migrated(url)
    before, after = upgrade(url)
    assert before is None and after == head_revision()
    ensure_migrated(url)  # no longer raises
    assert upgrade(url) == (head_revision(), head_revision())  # idempotent


def test_postgres_unmigrated_is_refused(pg_url):
    import psycopg

    from tests.conftest import PG_ADMIN_URL

    name = pg_url.rsplit("/", 1)[1] + "_empty"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + "/" + name
    try:
        with pytest.raises(DatabaseNotMigrated, match="no evalq tables"):
            ensure_migrated(url)
    finally:
        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_record_twice_leaves_one_result_and_one_score_set(db_url):
    exp_id, items = make_experiment(3, name="twice")
    for _ in range(2):
        with session_scope() as s:
            record_item_outcome(session=s, result_in=result_in(exp_id, items[0]),
                                scores_in=[score_in("a", 1.0), score_in("b", 0.0)])
    n_results, n_scores, exp = _counts(exp_id)
    assert (n_results, n_scores) == (1, 2)
    assert (exp.n_done, exp.n_failed, exp.status) == (1, 0, "running")


def test_error_then_success_moves_the_counters(db_url):
    exp_id, items = make_experiment(2, name="flip")
    with session_scope() as s:
        record_item_outcome(session=s, result_in=result_in(exp_id, items[0], ok=False),
                            scores_in=[])
    assert _counts(exp_id)[2].n_failed == 1
    with session_scope() as s:
        record_item_outcome(session=s, result_in=result_in(exp_id, items[0], ok=True),
                            scores_in=[score_in()])
    _, n_scores, exp = _counts(exp_id)
    assert (exp.n_done, exp.n_failed, n_scores) == (1, 0, 1)


def test_last_item_finalizes_exactly_once_under_concurrency(db_url):
    n, repeats = 40, 2
    exp_id, items = make_experiment(n, repeats=repeats, name="race")
    work = [(i, r) for i in items for r in range(repeats)]
    work = work + work[::3]  # some (item, repeat) arrive twice, as after a redelivery

    def write(key: tuple[int, int]) -> bool:
        item, rep = key
        with session_scope() as s:
            return record_item_outcome(
                session=s, result_in=result_in(exp_id, item, rep, cost=0.01),
                scores_in=[score_in("exact_match", 1.0 if item % 2 else 0.0)],
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        finalized = list(pool.map(write, work))
    assert sum(finalized) == 1, "the experiment must be finalized by exactly one write"
    n_results, n_scores, exp = _counts(exp_id)
    assert n_results == n * repeats and n_scores == n * repeats
    assert (exp.n_done, exp.n_failed, exp.status) == (n * repeats, 0, "completed")
    assert exp.finished_at is not None
    assert exp.cost_usd == pytest.approx(0.01 * n * repeats)
    assert exp.prompt_tokens == 10 * n * repeats


def test_scores_are_unique_per_subject_scorer_version(db_url):
    exp_id, items = make_experiment(1, name="uniq")
    with session_scope() as s:
        record_item_outcome(session=s, result_in=result_in(exp_id, items[0]),
                            scores_in=[score_in("a", 0.0)])
    with session_scope() as s:
        record_item_outcome(session=s, result_in=result_in(exp_id, items[0]),
                            scores_in=[score_in("a", 1.0)])
    with session_scope() as s:
        values = s.exec(select(Score.value).where(Score.experiment_id == exp_id)).all()
    assert values == [1.0]  # replaced, not duplicated


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    with EnvPatch(EVALQ_DATABASE_URL=url):
        upgrade()
        with get_engine().connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        with session_scope() as s:
            assert s.execute(sa.select(func.count(col(Experiment.id)))).scalar() == 0


def test_migrations_match_the_table_definitions(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"tables and migrations differ: write a migration for {diff}"
