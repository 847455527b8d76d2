"""Database access: plain functions, keyword-only arguments, the session first.

Writes that tasks make are idempotent upserts on the tables' unique keys, so a
task that runs twice (a redelivery after a crash) leaves one row, not two.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models.errors import NotFound
from models.tables import (
    Dataset,
    DatasetItem,
    Experiment,
    ExperimentStatus,
    ProductionRun,
    ProductionRunCreate,
    Result,
    ResultCreate,
    ResultStatus,
    Score,
    ScoreBase,
    ScoreCreate,
    SubjectType,
    utcnow,
)

_INSERT_CHUNK = 500


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"evalq supports SQLite and PostgreSQL, not {name}")


# --- datasets -------------------------------------------------------------------------


def get_or_create_dataset(
    *, session: Session, name: str, version: str, source: str | None,
    items: Iterable[dict[str, Any]], item_count: int | None = None,
) -> tuple[Dataset, bool]:
    """The dataset (name, version), created with its items if new. Returns (row, created).

    `items` is iterated once, and only if the dataset is new; they are inserted _INSERT_CHUNK
    at a time, so an iterator that reads a file never holds every item. `item_count`: how
    many there are (default len(items), which then must be a sized collection)."""
    count = item_count if item_count is not None else len(items)  # type: ignore[arg-type]
    stmt = (
        dialect_insert(session, Dataset)
        .values(name=name, version=version, source=source, item_count=count,
                created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["name", "version"])
        .returning(Dataset.id)  # type: ignore[arg-type]
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        chunk: list[dict[str, Any]] = []
        for item in items:
            chunk.append({"dataset_id": new_id, **item})
            if len(chunk) >= _INSERT_CHUNK:
                session.execute(sa.insert(DatasetItem), chunk)
                chunk = []
        if chunk:
            session.execute(sa.insert(DatasetItem), chunk)
    dataset = session.exec(
        select(Dataset).where(Dataset.name == name, Dataset.version == version)
    ).one()
    return dataset, new_id is not None


def latest_dataset(*, session: Session, name: str) -> Dataset | None:
    """The most recently stored version of the dataset called `name`."""
    return session.exec(
        select(Dataset).where(Dataset.name == name).order_by(col(Dataset.id).desc()).limit(1)
    ).first()


def dataset_item_ids(*, session: Session, dataset_id: int) -> list[int]:
    """Ids of a dataset's items in file order."""
    rows = session.exec(
        select(DatasetItem.id)
        .where(DatasetItem.dataset_id == dataset_id)
        .order_by(col(DatasetItem.position))
    ).all()
    return [int(r) for r in rows if r is not None]


# --- experiments ----------------------------------------------------------------------


def create_experiment(*, session: Session, experiment_in: Experiment) -> Experiment:
    """Insert a new experiment and return it with its id."""
    session.add(experiment_in)
    session.flush()
    return experiment_in


def get_experiment(*, session: Session, experiment_id: int) -> Experiment:
    """The experiment with this id, or NotFound."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(
            f"no experiment with id {experiment_id}: `evalq list` shows the experiments "
            "of this database (EVALQ_DATABASE_URL)"
        )
    return experiment


def mark_experiment(
    *, session: Session, experiment_id: int, status: ExperimentStatus, error: str | None = None
) -> None:
    """Set an experiment's status (and error); stamps started/finished times.

    RUNNING stamps `started_at` (the last (re)start) and clears `finished_at`; the first
    start (`first_started_at`) is set once and kept across resumes and reruns."""
    values: dict[str, Any] = {"status": status, "error": error}
    if status == ExperimentStatus.RUNNING:
        values.update(_restart_stamps())
    if status == ExperimentStatus.FAILED:
        values["finished_at"] = utcnow()
    session.execute(sa.update(Experiment).where(col(Experiment.id) == experiment_id).values(values))


def _restart_stamps() -> dict[str, Any]:
    """The values of an experiment's (re)start: this time as `started_at`, the first start
    kept (a row from before migration 0006 takes its old `started_at`), not finished."""
    now = utcnow()
    return {"started_at": now, "finished_at": None,
            "first_started_at": sa.func.coalesce(col(Experiment.first_started_at),
                                                 col(Experiment.started_at), now)}


def _counter_delta(status: str) -> tuple[int, int]:
    return (1, 0) if status == ResultStatus.OK else (0, 1)


def upsert_result(*, session: Session, result_in: ResultCreate) -> tuple[int, str | None]:
    """Insert or replace the Result on (experiment_id, item_id, repeat).

    Returns (result id, previous status or None if the row is new). The caller
    keeps the experiment's counters in step inside the same transaction.
    """
    now = utcnow()
    values = {**result_in.model_dump(), "created_at": now, "updated_at": now}
    inserted = session.execute(
        dialect_insert(session, Result)
        .values(values)
        .on_conflict_do_nothing(index_elements=["experiment_id", "item_id", "repeat"])
        .returning(Result.id)  # type: ignore[arg-type]
    ).scalar_one_or_none()
    if inserted is not None:
        return inserted, None
    key = (
        (col(Result.experiment_id) == result_in.experiment_id)
        & (col(Result.item_id) == result_in.item_id)
        & (col(Result.repeat) == result_in.repeat)
    )
    row = session.execute(
        sa.select(Result.id, Result.status).where(key).with_for_update()  # type: ignore[call-overload]
    ).one()
    updates = {k: v for k, v in values.items() if k not in ("created_at",)}
    session.execute(sa.update(Result).where(key).values(updates))
    return row.id, row.status


def upsert_scores(*, session: Session, scores_in: Iterable[ScoreCreate]) -> None:
    """Insert or replace Scores on (subject_type, subject_id, scorer, scorer_version)."""
    now = utcnow()
    rows = [{**s.model_dump(), "created_at": now} for s in scores_in]
    if not rows:
        return
    stmt = dialect_insert(session, Score)
    update_cols = {
        c: getattr(stmt.excluded, c)
        for c in (
            "value", "passed", "explanation", "error", "meta", "judge_model",
            "judge_cost_usd", "judge_tokens", "judge_latency_ms", "experiment_id", "created_at",
            "subject_at",
        )
    }
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["subject_type", "subject_id", "evaluator_id", "scorer",
                            "scorer_version"],
            set_=update_cols,
        ),
        rows,
    )


def record_item_outcome(*, session: Session, result_in: ResultCreate,
                        scores_in: Sequence[ScoreBase]) -> bool:
    """Write one (item, repeat)'s Result and Scores (see record_outcomes)."""
    return record_outcomes(session=session, experiment_id=result_in.experiment_id,
                           outcomes=[(result_in, scores_in)])


def record_outcomes(
    *, session: Session, experiment_id: int,
    outcomes: Sequence[tuple[ResultCreate, Sequence[ScoreBase]]],
) -> bool:
    """Write several (item, repeat)s' Results and their Scores in this transaction: one
    multi-row insert for new Results, an upsert for those that exist (a redelivery, a
    rerun), one multi-row score upsert, one counter update. Finalizes the experiment if
    this completed it; returns True only for the call that finalized it."""
    if not outcomes:
        return False
    now = utcnow()
    rows = [{**r.model_dump(), "created_at": now, "updated_at": now} for r, _ in outcomes]
    inserted = session.execute(
        dialect_insert(session, Result).values(rows)
        .on_conflict_do_nothing(index_elements=["experiment_id", "item_id", "repeat"])
        .returning(col(Result.id), col(Result.item_id), col(Result.repeat))
    ).all()
    new_ids = {(r[1], r[2]): r[0] for r in inserted}
    d_done = d_failed = 0
    spent = 0.0
    scores: list[ScoreCreate] = []
    for result_in, verdicts in outcomes:
        key = (result_in.item_id, result_in.repeat)
        previous: str | None = None
        if key in new_ids:
            result_id = new_ids[key]
        else:
            result_id, previous = upsert_result(session=session, result_in=result_in)
        done, failed = _counter_delta(result_in.status)
        if previous is not None:
            old_done, old_failed = _counter_delta(previous)
            done, failed = done - old_done, failed - old_failed
        else:  # running spend, for the budget; exact totals at finalization
            spent += float(result_in.cost_usd or 0.0) + sum(
                float(v.judge_cost_usd or 0.0) for v in verdicts)
        d_done, d_failed = d_done + done, d_failed + failed
        scores += [ScoreCreate.of(v, subject_type=SubjectType.RESULT, subject_id=result_id,
                                  experiment_id=experiment_id) for v in verdicts]
    upsert_scores(session=session, scores_in=scores)
    row = session.execute(
        sa.update(Experiment)
        .where(col(Experiment.id) == experiment_id)
        .values(n_done=Experiment.n_done + d_done, n_failed=Experiment.n_failed + d_failed,
                cost_usd=Experiment.cost_usd + spent)
        .returning(col(Experiment.n_done), col(Experiment.n_failed),
                   col(Experiment.total_items))
    ).one()
    if row[0] + row[1] < row[2]:
        return False
    return finalize_experiment(session=session, experiment_id=experiment_id)


def finalize_experiment(*, session: Session, experiment_id: int) -> bool:
    """Store the experiment's totals and mark it completed. Returns True only when this
    call moved it to COMPLETED (the totals are refreshed on every call)."""
    store_totals(session=session, experiment_id=experiment_id)
    skipped = session.execute(
        sa.select(sa.func.count()).select_from(Result)
        .where(col(Result.experiment_id) == experiment_id,
               col(Result.status) == ResultStatus.SKIPPED_BUDGET)
    ).scalar_one()
    final = ExperimentStatus.BUDGET_EXCEEDED if skipped else ExperimentStatus.COMPLETED
    moved = session.execute(
        sa.update(Experiment)
        .where(col(Experiment.id) == experiment_id,
               col(Experiment.status).not_in([ExperimentStatus.COMPLETED,
                                              ExperimentStatus.BUDGET_EXCEEDED,
                                              ExperimentStatus.FAILED]))
        .values(status=final, finished_at=utcnow())
    )
    return moved.rowcount == 1  # type: ignore[attr-defined]


def store_totals(*, session: Session, experiment_id: int) -> None:
    """Recompute the experiment's cost and token totals from its Results and Scores."""
    totals = session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(Result.cost_usd), 0.0),
            sa.func.coalesce(sa.func.sum(Result.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(Result.completion_tokens), 0),
        ).where(col(Result.experiment_id) == experiment_id)
    ).one()
    judge_cost = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(Score.judge_cost_usd), 0.0)).where(
            col(Score.experiment_id) == experiment_id
        )
    ).scalar_one()
    session.execute(
        sa.update(Experiment)
        .where(col(Experiment.id) == experiment_id)
        .values(cost_usd=totals[0], prompt_tokens=totals[1], completion_tokens=totals[2],
                judge_cost_usd=judge_cost)
    )


# --- reading for reports --------------------------------------------------------------


def result_rows(*, session: Session, experiment_id: int) -> list[Result]:
    """Every Result of an experiment."""
    return list(session.exec(select(Result).where(Result.experiment_id == experiment_id)).all())


def score_rows(*, session: Session, experiment_id: int) -> list[Score]:
    """Every Score of an experiment's Results."""
    return list(session.exec(select(Score).where(Score.experiment_id == experiment_id)).all())


_REPORT_ITEM_COLUMNS = ("id", "key", "position", "meta")
_REPORT_CONTENT_COLUMNS = ("input", "expected")
_REPORT_SCORE_COLUMNS = ("subject_id", "scorer", "value", "passed", "explanation", "error",
                         "judge_cost_usd")


def report_item_rows(*, session: Session, dataset_id: int, content: bool = True,
                     meta: bool = True, item_ids: Sequence[int] | None = None
                     ) -> Sequence[Any]:
    """A dataset's items (or those of `item_ids`) as plain rows (id, key, position[, meta]
    [, input, expected]) in file order: the columns a report reads, no ORM objects."""
    names = (_REPORT_ITEM_COLUMNS if meta else _REPORT_ITEM_COLUMNS[:3]) + (
        _REPORT_CONTENT_COLUMNS if content else ())
    table = DatasetItem.__table__  # type: ignore[attr-defined]
    stmt = sa.select(*(table.c[n] for n in names)).where(table.c.dataset_id == dataset_id)
    if item_ids is not None:
        stmt = stmt.where(table.c.id.in_(list(item_ids)))
    return session.execute(stmt.order_by(table.c.position)).all()


def report_result_rows(*, session: Session, experiment_id: int, columns: Sequence[str],
                       item_ids: Sequence[int] | None = None) -> Sequence[Any]:
    """An experiment's Results (or those of `item_ids`) as plain rows of the given
    columns (no ORM objects)."""
    table = Result.__table__  # type: ignore[attr-defined]
    stmt = sa.select(*(table.c[n] for n in columns)).where(
        table.c.experiment_id == experiment_id)
    if item_ids is not None:
        stmt = stmt.where(table.c.item_id.in_(list(item_ids)))
    return session.execute(stmt).all()


def report_score_rows(*, session: Session, experiment_id: int,
                      result_ids: Sequence[int] | None = None) -> Sequence[Any]:
    """An experiment's Scores (or those of `result_ids`) as plain rows (subject_id, scorer,
    value, passed, explanation, error, judge_cost_usd)."""
    table = Score.__table__  # type: ignore[attr-defined]
    stmt = sa.select(*(table.c[n] for n in _REPORT_SCORE_COLUMNS)).where(
        table.c.experiment_id == experiment_id)
    if result_ids is not None:
        stmt = stmt.where(table.c.subject_id.in_(list(result_ids)))
    return session.execute(stmt).all()


def list_experiments(*, session: Session, limit: int = 50) -> list[Experiment]:
    """The newest experiments first."""
    return list(
        session.exec(select(Experiment).order_by(col(Experiment.id).desc()).limit(limit)).all()
    )


def stored_items(*, session: Session, dataset_id: int) -> list[DatasetItem]:
    """A dataset's items in file order."""
    return list(
        session.exec(
            select(DatasetItem)
            .where(DatasetItem.dataset_id == dataset_id)
            .order_by(col(DatasetItem.position))
        ).all()
    )


def insert_runs(*, session: Session, rows_in: Sequence[ProductionRunCreate]) -> int:
    """Insert production runs, skipping (source, external_id) pairs already stored.
    Returns how many were new."""
    if not rows_in:
        return 0
    now = utcnow()
    rows = [{**r.model_dump(), "ingested_at": now} for r in rows_in]
    inserted = session.execute(
        dialect_insert(session, ProductionRun)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["source", "external_id"])
        .returning(ProductionRun.id)  # type: ignore[arg-type]
    ).all()
    return len(inserted)


def reset_failed_results(*, session: Session, experiment_id: int) -> list[tuple[int, int]]:
    """Delete an experiment's failed Results (with their Scores) so they can run again;
    the experiment goes back to RUNNING, restarted now (`started_at`; its first start is
    kept). Returns the (item_id, repeat) pairs removed."""
    failed = session.execute(
        sa.select(col(Result.id), col(Result.item_id), col(Result.repeat))
        .where(col(Result.experiment_id) == experiment_id,
               col(Result.status) == ResultStatus.ERROR)
        .with_for_update()
    ).all()
    if not failed:
        return []
    ids = [r[0] for r in failed]
    session.execute(sa.delete(Score).where(col(Score.subject_type) == "result",
                                           col(Score.subject_id).in_(ids)))
    session.execute(sa.delete(Result).where(col(Result.id).in_(ids)))
    session.execute(
        sa.update(Experiment).where(col(Experiment.id) == experiment_id)
        .values(n_failed=Experiment.n_failed - len(ids), status=ExperimentStatus.RUNNING,
                error=None, **_restart_stamps())
    )
    return [(r[1], r[2]) for r in failed]


def result_status_counts(*, session: Session, experiment_id: int) -> dict[str, int]:
    """How many Results of an experiment have each status (ok, error, skipped_budget);
    statuses without a Result are absent."""
    rows = session.execute(
        sa.select(col(Result.status), sa.func.count())
        .where(col(Result.experiment_id) == experiment_id)
        .group_by(col(Result.status))).all()
    return {str(status): int(n) for status, n in rows}


def missing_results(*, session: Session, experiment_id: int) -> list[tuple[int, int]]:
    """(item_id, repeat) pairs of an experiment that have no Result yet."""
    exp = get_experiment(session=session, experiment_id=experiment_id)
    items = dataset_item_ids(session=session, dataset_id=exp.dataset_id)
    have = set(session.execute(
        sa.select(col(Result.item_id), col(Result.repeat))
        .where(col(Result.experiment_id) == experiment_id)).all())
    return [(i, r) for r in range(exp.repeats) for i in items if (i, r) not in have]


def add_scorer_specs(*, session: Session, experiment_id: int, specs: list[dict[str, Any]]
                     ) -> int:
    """Append scorer specs to an experiment and bump its config version (returned)."""
    exp = session.execute(sa.select(Experiment).where(col(Experiment.id) == experiment_id)
                          .with_for_update()).scalar_one()
    exp.scorers = [*(exp.scorers or []), *specs]
    exp.config_version += 1
    session.add(exp)
    session.flush()
    return exp.config_version


def spent_usd(*, session: Session, experiment_id: int) -> float:
    """What an experiment has spent so far (target and judge calls)."""
    return float(session.execute(
        sa.select(col(Experiment.cost_usd) + col(Experiment.judge_cost_usd))
        .where(col(Experiment.id) == experiment_id)).scalar_one())


def headline_scores(*, session: Session, experiment_ids: Sequence[int]
                    ) -> dict[int, dict[str, float]]:
    """Mean score per scorer label of each experiment, as the report computes it: each
    item's repeats averaged first, then the mean of the item means (one grouped query)."""
    per_item = (
        sa.select(col(Score.experiment_id).label("exp"), col(Score.scorer).label("label"),
                  sa.func.avg(Score.value).label("item_mean"))
        .join(Result, col(Result.id) == col(Score.subject_id))
        .where(col(Score.experiment_id).in_(list(experiment_ids)),
               col(Score.subject_type) == SubjectType.RESULT.value,
               col(Score.value).is_not(None))
        .group_by(col(Score.experiment_id), col(Score.scorer), col(Result.item_id))
        .subquery())
    rows = session.execute(
        sa.select(per_item.c.exp, per_item.c.label, sa.func.avg(per_item.c.item_mean))
        .group_by(per_item.c.exp, per_item.c.label)
    ).all()
    out: dict[int, dict[str, float]] = {}
    for exp_id, label, mean in rows:
        if mean is not None:
            out.setdefault(exp_id, {})[label] = round(float(mean), 4)
    return out
