"""Re-runs of an experiment: failed items again, unfinished items after a crash, and new
scorers on stored outputs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from models.crud import (
    add_scorer_specs,
    get_experiment,
    mark_experiment,
    missing_results,
    reset_failed_results,
)
from models.db import session_scope
from models.migrate import prepare_database
from models.settings import get_settings
from models.tables import ExperimentStatus, Result, ResultStatus, Score
from scheduler.checks import resolve_scorer_specs
from scheduler.errors import InputError, WaitTimeout
from scheduler.experiments.dispatch import rescore_results, run_pairs
from workers.offline.rescore import refresh_totals


def rerun_failed(experiment_id: int) -> int:
    """Run again, in the same experiment, the (item, repeat)s whose target failed (not
    those that scored low). Returns how many were re-enqueued."""
    prepare_database()
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        config_version = exp.config_version
        pairs = reset_failed_results(session=session, experiment_id=experiment_id)
    if pairs:
        run_pairs(experiment_id, pairs, config_version=config_version)
    return len(pairs)


def resume(experiment_id: int) -> int:
    """Enqueue every (item, repeat) that has no Result (after a crash of everything).
    Items still queued run once: a task whose Result exists is skipped."""
    prepare_database()
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        config_version = exp.config_version
        pairs = missing_results(session=session, experiment_id=experiment_id)
        if pairs:
            mark_experiment(session=session, experiment_id=experiment_id,
                            status=ExperimentStatus.RUNNING)
    if pairs:
        run_pairs(experiment_id, pairs, config_version=config_version)
    return len(pairs)


@dataclass
class Rescore:
    """What `rescore` did: the labels it added (and is scoring), and the labels of the
    scorers asked for that the experiment already had (not added again)."""

    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def _identity(spec: dict[str, Any]) -> str:
    """A scorer spec without its label: type, version and parameters, as canonical JSON."""
    return json.dumps([spec.get("type"), str(spec.get("version")), spec.get("params") or {}],
                      sort_keys=True, default=str)


def rescore(experiment_id: int, scorers: Sequence[str | dict[str, Any]]) -> Rescore:
    """Add scorers to a completed experiment and score its stored outputs with them
    (no target call); `wait_for_rescore` waits for the added labels.

    Idempotent: a scorer identical to one the experiment has (same type, version and
    parameters; given twice, the same) is not added again, and is listed as present with
    its label. One of the same name with other parameters is added as NAME#2, NAME#3..."""
    prepare_database()
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        if exp.status != ExperimentStatus.COMPLETED:
            raise InputError(f"experiment {experiment_id} is {exp.status}; rescore a completed "
                             f"experiment (`evalq resume {experiment_id}` finishes it first)")
        existing = list(exp.scorers or [])
    taken = {s["label"] for s in existing}
    known = {_identity(s): s["label"] for s in existing}
    outcome = Rescore()
    specs = []
    for scorer in resolve_scorer_specs(scorers):
        spec = scorer.spec()
        same = known.get(_identity(spec))
        if same is not None:
            if same not in outcome.present and same not in outcome.added:
                outcome.present.append(same)
            continue
        n = 2
        while spec["label"] in taken:
            spec["label"] = f"{scorer.name}#{n}"
            n += 1
        taken.add(spec["label"])
        known[_identity(spec)] = spec["label"]
        specs.append(spec)
        outcome.added.append(spec["label"])
    if not specs:
        return outcome
    with session_scope() as session:
        add_scorer_specs(session=session, experiment_id=experiment_id, specs=specs)
        result_ids = session.execute(
            sa.select(col(Result.id)).where(col(Result.experiment_id) == experiment_id,
                                            col(Result.status) == ResultStatus.OK)).scalars().all()
    rescore_results(experiment_id, result_ids)
    return outcome


def rescore_progress(experiment_id: int, labels: Sequence[str]) -> tuple[int, int]:
    """(scores stored for the new labels, scores expected)."""
    with session_scope() as session:
        expected = session.execute(
            sa.select(sa.func.count()).select_from(Result)
            .where(col(Result.experiment_id) == experiment_id,
                   col(Result.status) == ResultStatus.OK)).scalar_one() * len(labels)
        done = session.execute(
            sa.select(sa.func.count()).select_from(Score)
            .where(col(Score.experiment_id) == experiment_id,
                   col(Score.scorer).in_(list(labels)))).scalar_one()
    return done, expected


def wait_for_rescore(experiment_id: int, labels: Sequence[str], timeout: float | None = None,
                     on_progress: Callable[[int, int], None] | None = None) -> None:
    """Block until every stored output has a Score for each new label."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, expected = rescore_progress(experiment_id, labels)
        if on_progress:
            on_progress(done, expected)
        if done >= expected:
            refresh_totals(experiment_id)
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"rescore of experiment {experiment_id}: {done}/{expected} "
                              "scores after the timeout; it goes on in the workers")
        time.sleep(get_settings().poll_interval_s)
