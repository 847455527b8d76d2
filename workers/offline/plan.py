"""What a worker needs to evaluate an experiment's items: its plan and its test cases.

`plan_of` is the one function that turns an Experiment row into an ExperimentPlan: the
scheduler calls it before storing a new experiment (so what a worker will build is known
to build), and a worker calls it through `load_plan`. Plans and cases are cached per
process, keyed by database URL and id (dataset items are immutable; a plan is reloaded
when its experiment's config version moves on, i.e. a rescore added scorers).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from models.db import session_scope
from models.settings import get_settings
from models.tables import DatasetItem, Experiment
from workers.errors import WorkerError
from workers.scorers import ResolvedScorer, rebind


@dataclass(frozen=True)
class ExperimentPlan:
    """An experiment's immutable configuration, as a worker needs it."""

    experiment_id: int
    model: str
    target: str | None  # a Python callable target, or None for the model
    api_base: str | None
    template: str | None
    params: dict[str, Any]
    scorers: tuple[ResolvedScorer, ...]
    cache_mode: str = "auto"
    config_version: int = 0
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class Case:
    """One test case."""

    item_id: int
    key: str
    input: Any
    expected: Any
    metadata: dict[str, Any]
    assertions: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None

    def custom(self) -> dict[str, Any]:
        """Key/values of the case's `custom` assertions (handed to custom scorers)."""
        merged: dict[str, Any] = {}
        for spec in self.assertions:
            if spec.get("type") == "custom" and isinstance(spec.get("value"), dict):
                merged.update(spec["value"])
        return merged


def plan_of(exp: Experiment) -> ExperimentPlan:
    """The plan of an experiment row (its scorers bound again from their stored specs)."""
    return ExperimentPlan(
        exp.id or 0, exp.model, exp.target, exp.api_base, exp.prompt_template,
        dict(exp.model_params or {}), tuple(rebind(spec) for spec in exp.scorers or []),
        exp.cache_mode, exp.config_version, exp.max_cost_usd,
    )


def case_of(item: DatasetItem) -> Case:
    """The Case of a dataset row."""
    assert item.id is not None
    return Case(item.id, item.key, item.input, item.expected, dict(item.meta or {}),
                tuple(item.assertions or ()), tuple(item.tools) if item.tools else None)


_plans: dict[tuple[str, int], ExperimentPlan] = {}
_cases: dict[tuple[str, int], Case] = {}
_cache_lock = threading.Lock()
_MAX_CACHED_CASES = 50_000


def load_plan(experiment_id: int, config_version: int = 0) -> ExperimentPlan:
    """The experiment's plan, cached per process; reloaded when the experiment's
    configuration is newer than the cached one (scorers added by a rescore)."""
    key = (get_settings().database_url, experiment_id)
    plan = _plans.get(key)
    if plan is None or plan.config_version < config_version:
        with session_scope() as session:
            exp = session.get(Experiment, experiment_id)
            if exp is None:
                raise WorkerError(f"experiment {experiment_id} does not exist in this database")
            plan = plan_of(exp)
        with _cache_lock:
            _plans[key] = plan
    return plan


def load_cases(item_ids: Sequence[int]) -> dict[int, Case]:
    """Test cases by id, from the process cache or one query for the missing ones."""
    url = get_settings().database_url
    found = {i: c for i in item_ids if (c := _cases.get((url, i))) is not None}
    missing = [i for i in item_ids if i not in found]
    if missing:
        with session_scope() as session:
            rows = session.execute(sa.select(DatasetItem)
                                   .where(col(DatasetItem.id).in_(missing))).scalars().all()
            loaded = [case_of(item) for item in rows]
        with _cache_lock:
            if len(_cases) + len(loaded) > _MAX_CACHED_CASES:
                _cases.clear()
            for case in loaded:
                _cases[(url, case.item_id)] = case
                found[case.item_id] = case
    for item_id in item_ids:
        if item_id not in found:
            raise WorkerError(f"dataset item {item_id} does not exist in this database")
    return found
