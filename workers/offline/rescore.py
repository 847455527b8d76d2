"""Rescoring: run scorers added to a finished experiment on its stored outputs, without
calling the target again."""

from __future__ import annotations

from sqlmodel import select

from models.crud import store_totals, upsert_scores
from models.db import session_scope
from models.tables import Experiment, Result, ResultStatus, Score, ScoreCreate, SubjectType
from workers.offline.plan import load_cases
from workers.runtime import aio
from workers.scorers import rebind
from workers.scoring import assertion_scorers, sample_of, score_sample


def rescore_result(experiment_id: int, result_id: int) -> str:
    """Score one Result with every scorer of its experiment that has not scored it yet.
    Idempotent: a second run finds nothing missing."""
    with session_scope() as session:
        exp = session.get(Experiment, experiment_id)
        result = session.get(Result, result_id)
        if exp is None or result is None or result.status != ResultStatus.OK:
            return "skipped"
        have = set(session.exec(select(Score.scorer).where(
            Score.subject_type == SubjectType.RESULT, Score.subject_id == result_id)).all())
        specs = [s for s in exp.scorers or [] if s["label"] not in have]
        session.expunge(result)  # its output is read after the session closes
    if not specs:
        return "skipped"
    case = load_cases([result.item_id])[result.item_id]
    scorers = [rebind(spec) for spec in specs]
    if not have:  # first scoring of this result: its assertions too
        scorers += assertion_scorers(case.assertions)
    sample = sample_of(result, input=case.input, expected=case.expected,
                       metadata=case.metadata, custom=case.custom())
    verdicts = aio.run(score_sample(scorers, sample))
    with session_scope() as session:
        upsert_scores(session=session, scores_in=[
            ScoreCreate.of(v, subject_type=SubjectType.RESULT, subject_id=result_id,
                           experiment_id=experiment_id) for v in verdicts])
    return "scored"


def refresh_totals(experiment_id: int) -> None:
    """Recompute the experiment's stored cost and token totals (after a rescore)."""
    with session_scope() as session:
        store_totals(session=session, experiment_id=experiment_id)
