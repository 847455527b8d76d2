"""Starting an offline run: validate everything, store the dataset and a new experiment,
then hand its (item, repeat)s to the workers (or this process's thread pool)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlmodel import Session

from models.crud import create_experiment, dataset_item_ids, get_or_create_dataset
from models.db import session_scope
from models.leases import live_workers
from models.migrate import prepare_database
from models.settings import Settings, get_settings
from models.tables import Experiment, utcnow
from scheduler.checks import (
    check_api_base,
    check_model,
    check_params,
    check_shared_services,
    check_target,
    resolve_scorer_specs,
)
from scheduler.errors import DatasetFormatError, InputError
from scheduler.experiments.dataset_file import ParsedDataset
from scheduler.experiments.datasets import resolve_dataset
from scheduler.experiments.dispatch import run_pairs
from scheduler.liveness import offline_queue, queues_of
from workers.errors import UnknownScorer, WorkerError
from workers.offline.plan import plan_of
from workers.offline.prompt import DEFAULT_TEMPLATE, check_template
from workers.scorers.registry import bind_from_data

log = logging.getLogger(__name__)


def _validate_items(parsed: ParsedDataset, prompt: str | None, needs_expected: list[str],
                    check_prompt: bool) -> None:
    for item in parsed.items:
        line = item["position"]
        try:
            if check_prompt:
                check_template(prompt or DEFAULT_TEMPLATE, item["input"], item["meta"])
        except WorkerError as exc:
            raise DatasetFormatError(parsed.source, line, str(exc)) from None
        for index, spec in enumerate(item["assertions"] or []):
            if spec.get("type") == "custom":
                continue  # key/values for custom scorers
            try:  # data names registered scorers only: a module:function is never imported
                bind_from_data(spec, f"assert:{spec.get('type')}")
            except WorkerError as exc:
                field = f"assertions[{index}]" + (".type" if isinstance(exc, UnknownScorer)
                                                  else "")
                raise DatasetFormatError(parsed.source, line, f"{field}: {exc}") from None
        if needs_expected and item["expected"] is None:
            raise DatasetFormatError(
                parsed.source, line, f"\"expected\" is missing — scorer {needs_expected[0]} "
                "compares the output to it (add it, or give the scorer a value)"
            )


def default_scorers(parsed: ParsedDataset) -> list[str | dict[str, Any]]:
    """exact_match when every case has an expected answer; otherwise assertions only."""
    if all(item["expected"] is not None for item in parsed.items):
        return ["exact_match"]
    if any(item["assertions"] for item in parsed.items):
        return []
    raise InputError(
        f"{parsed.source}: nothing to score: give --scorer, or add \"expected\" or "
        "\"assertions\" to the test cases"
    )


def run_concurrency(session: Session, settings: Settings) -> int | None:
    """Items evaluated at once by a run enqueued now: EVALQ_CONCURRENCY in embedded mode;
    in distributed mode the summed concurrency (pool slots) of the live workers that
    consume the offline queue, from their heartbeats; None when no live worker is known."""
    if settings.embedded:
        return settings.concurrency
    workers = live_workers(session=session, now=utcnow(),
                           dead_after_s=settings.worker_dead_after_s)
    total = sum(w.concurrency for w in workers if offline_queue() in queues_of(w))
    return total or None


def _store(parsed: ParsedDataset, experiment: Experiment) -> tuple[int, list[int]]:
    with session_scope() as session:
        experiment.concurrency = run_concurrency(session, get_settings())
        row, _ = get_or_create_dataset(
            session=session, name=parsed.name, version=parsed.version,
            source=parsed.source, items=parsed.items,
        )
        assert row.id is not None
        experiment.dataset_id = row.id
        item_ids = dataset_item_ids(session=session, dataset_id=row.id)
        experiment.total_items = len(item_ids) * experiment.repeats
        experiment.name = experiment.name or f"{row.name}@{row.version[:8]}"
        create_experiment(session=session, experiment_in=experiment)
        assert experiment.id is not None
        return experiment.id, item_ids


def enqueue_offline_run(
    dataset: str | Path,
    model: str | None = None,
    scorers: Sequence[str | dict[str, Any]] | None = None,
    prompt: str | None = None,
    repeats: int = 1,
    model_params: dict[str, Any] | None = None,
    name: str | None = None,
    api_base: str | None = None,
    target: str | None = None,
    cache: str = "auto",
    max_cost_usd: float | None = None,
) -> int:
    """Validate everything, store the dataset and a new experiment, then enqueue its (item,
    repeat)s in chunks. Returns the experiment id. Nothing is written if any input is bad.

    `scorers` default: exact_match when every case has "expected", else the cases'
    assertions only. `target` ("package.module:function") evaluates a Python callable
    (an agent, a pipeline) instead of a model. `cache`: "auto" (reuse stored responses of
    temperature-0 calls), "on" or "off".

    Distributed mode (EVALQ_BROKER_URL set): tasks go to the broker for workers.
    Embedded mode: they run on a thread pool in this process, in the background.
    """
    settings = get_settings()
    if not 1 <= repeats <= settings.max_repeats:
        raise InputError(f"repeats must be between 1 and {settings.max_repeats}, got {repeats}")
    params = check_params(model_params)
    check_api_base(api_base)
    check_target(target, prompt)
    if target is None and settings.embedded:
        # Distributed mode never imports litellm here (~3 s for a process that makes no
        # model call): a name litellm cannot route fails the first worker's calls the same
        # permanent way, and fail fast stops the experiment with litellm's message.
        check_model(model or settings.default_model, api_base)
    if max_cost_usd is not None and max_cost_usd <= 0:
        raise InputError(f"the cost budget must be above 0, got {max_cost_usd}")
    if cache not in ("auto", "on", "off"):
        raise InputError(f"cache must be auto, on or off, got {cache!r}")
    check_shared_services(settings)
    if scorers is not None:
        resolved = resolve_scorer_specs(scorers)
    parsed = resolve_dataset(dataset)
    if scorers is None:
        resolved = resolve_scorer_specs(default_scorers(parsed))
    needs = [s.label for s in resolved if s.needs_expected]
    _validate_items(parsed, prompt, needs, check_prompt=target is None)
    prepare_database()
    experiment = Experiment(
        name=name or "", dataset_id=0, target=target,
        model=target or model or settings.default_model, api_base=api_base,
        prompt_template=prompt, model_params=params, scorers=[s.spec() for s in resolved],
        repeats=repeats, mode="embedded" if settings.embedded else "distributed",
        cache_mode=cache, max_cost_usd=max_cost_usd,
    )
    try:  # the plan a worker will build from this row
        plan_of(experiment)
    except WorkerError as exc:
        raise InputError(str(exc)) from None
    experiment_id, item_ids = _store(parsed, experiment)
    pairs = [(item_id, rep) for rep in range(repeats) for item_id in item_ids]
    run_pairs(experiment_id, pairs, start=True)
    log.info("experiment %s: %d items %s", experiment_id, len(pairs),
             "running in-process" if settings.embedded else "enqueued")
    return experiment_id
