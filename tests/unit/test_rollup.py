"""The score rollup behind online reports: the same moments as the Score rows, a claim
added once however often it is scored, and the migration's backfill.

Runs on SQLite and PostgreSQL (the `db_url` fixture).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import select

from models.aggregates import (
    Moments,
    add_to_rollup,
    raw_scorer_moments,
    raw_window_moments,
    scorer_moments,
    window_moments,
)
from models.claims import mark_claim_done
from models.crud import upsert_scores
from models.db import get_engine, session_scope
from models.migrate import alembic_config
from models.tables import (
    ClaimStatus,
    OnlineClaim,
    OnlineEvaluator,
    ProductionRun,
    Score,
    ScoreBase,
    ScoreCreate,
    ScoreRollup,
    utcnow,
)
from workers.online import claimed_runs

T0 = datetime(2026, 1, 5, tzinfo=UTC)
SCORERS = ("relevance", "tone", "judge")


def _evaluator(name: str) -> int:
    with session_scope() as session:
        ev = OnlineEvaluator(name=name, scorers=[])
        session.add(ev)
        session.flush()
        assert ev.id is not None
        return ev.id


def _score(run_id: int, evaluator_id: int, at: datetime, scorer: str, value: float | None,
           passed: bool | None) -> ScoreCreate:
    return ScoreCreate(subject_type="run", subject_id=run_id, evaluator_id=evaluator_id,
                       subject_at=at, scorer=scorer, scorer_version="1", value=value,
                       passed=passed, error=None if value is not None else "unparseable")


def _random_scores(evaluator_id: int, rng: random.Random, n_runs: int, *,
                   rollup: bool = True) -> None:
    """n_runs runs at random times over 24 h after T0, each scored by a random subset of
    SCORERS (some unscored, some passed without a value); the rollup is kept as scoring a
    claim keeps it, unless `rollup` is False (Scores written before the rollup existed)."""
    with session_scope() as session:
        ats = [T0 + timedelta(seconds=rng.uniform(0, 86_400)) for _ in range(n_runs)]
        runs = [ProductionRun(source="t", external_id=uuid.uuid4().hex, created_at=at)
                for at in ats]
        session.add_all(runs)
        session.flush()
        for run, at in zip(runs, ats, strict=True):
            assert run.id is not None
            scores = []
            for scorer in SCORERS:
                if rng.random() < 0.3:
                    continue
                value = None if rng.random() < 0.1 else rng.choice([0.0, 1.0, rng.random()])
                passed = None if rng.random() < 0.1 else rng.random() < 0.6
                scores.append(_score(run.id, evaluator_id, at, scorer, value, passed))
            upsert_scores(session=session, scores_in=scores)
            if rollup:
                add_to_rollup(session=session, evaluator_id=evaluator_id, subject_at=at,
                              scores=[(s.scorer, s.value, s.passed) for s in scores])


def _same(got: dict[Any, Moments], want: dict[Any, Moments]) -> None:
    assert list(got) == list(want)
    for key, m in want.items():
        g = got[key]
        assert (g.n, g.n_unscored, g.n_passed) == (m.n, m.n_unscored, m.n_passed), key
        assert g.total == pytest.approx(m.total, rel=1e-9, abs=1e-9), key
        assert g.total_sq == pytest.approx(m.total_sq, rel=1e-9, abs=1e-9), key


def test_rollup_moments_equal_the_scores_moments(db_url: str):
    """Random scores: per window (minute-multiple windows from the rollup, with ragged
    ends read from the Scores) and per scorer over ragged periods, the rollup's moments
    are the Scores' moments."""
    rng = random.Random(14)
    ev = _evaluator("rolled")
    other = _evaluator("other")  # never counted in ev's moments
    _random_scores(ev, rng, 600)
    _random_scores(other, rng, 50)
    until = T0 + timedelta(hours=23, minutes=17, seconds=31, microseconds=250)
    with session_scope() as session:
        assert session.exec(select(sa.func.count()).select_from(ScoreRollup)).one() > 0
        for window_s in (60, 300, 900, 3600, 86_400):
            for since in (T0, T0 + timedelta(hours=3)):
                kwargs = {"session": session, "evaluator_id": ev, "window_s": window_s,
                          "since": since, "until": until}
                _same(window_moments(**kwargs), raw_window_moments(**kwargs))
        # not a whole number of minutes: the Scores themselves
        kwargs = {"session": session, "evaluator_id": ev, "window_s": 45,
                  "since": T0, "until": until}
        _same(window_moments(**kwargs), raw_window_moments(**kwargs))
        periods = [(None, None), (T0 + timedelta(seconds=3_601.5), until), (None, until),
                   (T0 + timedelta(minutes=7, seconds=3), None),
                   (T0 + timedelta(seconds=10), T0 + timedelta(seconds=50))]
        for since, until_ in periods:
            _same(scorer_moments(session=session, evaluator_id=ev, since=since, until=until_),
                  raw_scorer_moments(session=session, evaluator_id=ev, since=since,
                                     until=until_))


def test_a_claim_scored_twice_adds_once(db_url: str, monkeypatch: pytest.MonkeyPatch):
    """Two scorings of one claim racing (a redelivery while the first still runs): both
    pass the "not done yet" check, both write their Score, only the one whose UPDATE
    closed the claim adds to the rollup. The judge answered differently each time: the
    rollup keeps the closing scoring's value, the Score row the last written."""
    ev = _evaluator("twice")
    at = T0 + timedelta(minutes=5, seconds=7)
    with session_scope() as session:
        run = ProductionRun(source="t", external_id="r1", created_at=at)
        session.add(run)
        session.flush()
        assert run.id is not None
        claim = OnlineClaim(evaluator_id=ev, run_id=run.id)
        session.add(claim)
        session.flush()
        claim_id = claim.id
    assert claim_id is not None
    arrived: list[float] = []
    values = iter([1.0, 0.0])

    async def judge(scorers: Any, sample: Any) -> list[ScoreBase]:
        value = next(values)
        arrived.append(value)
        while len(arrived) < 2:  # both scorings have read the claim as not done
            await asyncio.sleep(0.01)
        return [ScoreBase(scorer="judge", scorer_version="1", value=value,
                          passed=value >= 0.5)]

    monkeypatch.setattr(claimed_runs, "score_sample", judge)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(claimed_runs.score_claim, [claim_id, claim_id]))
    assert outcomes == ["scored", "scored"]
    assert claimed_runs.score_claim(claim_id) == "skipped"  # done now
    with session_scope() as session:
        rollup = session.exec(select(ScoreRollup)).all()
        score = session.exec(select(Score)).one()
        assert session.get(OnlineClaim, claim_id).status == ClaimStatus.DONE  # type: ignore[union-attr]
        assert not mark_claim_done(session=session, claim_id=claim_id, now=utcnow())
    assert len(rollup) == 1
    row = rollup[0]
    assert (row.evaluator_id, row.scorer, row.bucket) == (ev, "judge",
                                                          int(T0.timestamp()) + 300)
    assert (row.n, row.n_unscored) == (1, 0)  # added once
    assert row.total in (0.0, 1.0) and row.n_passed == int(row.total)
    assert score.value in (0.0, 1.0)


def test_mark_claim_done_moves_a_claim_once(db_url: str):
    ev = _evaluator("once")
    with session_scope() as session:
        run = ProductionRun(source="t", external_id="r1", created_at=T0)
        session.add(run)
        session.flush()
        assert run.id is not None
        claim = OnlineClaim(evaluator_id=ev, run_id=run.id)
        session.add(claim)
        session.flush()
        assert claim.id is not None
        assert mark_claim_done(session=session, claim_id=claim.id, now=utcnow())
        assert not mark_claim_done(session=session, claim_id=claim.id, now=utcnow())


def test_removing_an_evaluator_removes_its_rollup(db_url: str):
    from scheduler.evaluators import remove_evaluator  # lazy: only this test needs it

    ev = _evaluator("gone")
    _random_scores(ev, random.Random(1), 20)
    remove_evaluator("gone")
    with session_scope() as session:
        assert session.exec(select(sa.func.count()).select_from(ScoreRollup)).one() == 0


def test_migration_backfills_the_rollup_from_existing_scores(db_url: str):
    """Scores written before 0008 (no rollup): the upgrade's INSERT ... SELECT gives the
    rollup the Scores' moments; offline Scores (evaluator_id 0) stay out."""
    ev = _evaluator("before")
    _random_scores(ev, random.Random(8), 300, rollup=False)
    with session_scope() as session:  # an offline score: not in any rollup
        session.add(Score(subject_type="result", subject_id=1, evaluator_id=0,
                          subject_at=T0, scorer="relevance", scorer_version="1", value=1.0))
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0007")
    get_engine().dispose()
    command.upgrade(cfg, "head")
    get_engine().dispose()
    until = T0 + timedelta(hours=20, seconds=30)
    with session_scope() as session:
        assert session.exec(select(sa.func.count()).select_from(ScoreRollup)
                            .where(ScoreRollup.evaluator_id == 0)).one() == 0
        kwargs = {"session": session, "evaluator_id": ev, "window_s": 600,
                  "since": T0, "until": until}
        _same(window_moments(**kwargs), raw_window_moments(**kwargs))
        _same(scorer_moments(session=session, evaluator_id=ev),
              raw_scorer_moments(session=session, evaluator_id=ev))
