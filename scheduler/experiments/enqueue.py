"""Offline runs: enqueue a dataset against a target, wait for it in the database."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlmodel import Session

from models.crud import (
    create_experiment,
    dataset_item_ids,
    get_experiment,
    get_or_create_dataset,
    latest_dataset,
    mark_experiment,
    stored_items,
)
from models.db import session_scope
from models.migrate import ensure_migrated, upgrade
from models.settings import get_settings
from models.tables import DatasetItem, Experiment, ExperimentStatus
from scheduler.errors import DatasetFormatError, EnqueueError, InputError, WaitTimeout
from scheduler.experiments import embedded
from scheduler.experiments.dataset_file import ParsedDataset, load_dataset_file
from scheduler.liveness import NoWorkerWatch
from workers.errors import WorkerError

log = logging.getLogger(__name__)
DONE_STATUSES = {ExperimentStatus.COMPLETED.value, ExperimentStatus.FAILED.value,
                 ExperimentStatus.BUDGET_EXCEEDED.value}


def shipped_datasets_dir() -> Path:
    """Where `NAME` datasets are looked up: EVALQ_DATASETS_DIR or the repo's datasets/."""
    configured = get_settings().datasets_dir
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "datasets"


def _resolve_dataset(dataset: str | Path) -> ParsedDataset:
    """The test cases of a file path, a shipped dataset NAME, or a stored dataset NAME."""
    settings = get_settings()
    path = Path(dataset)
    if path.is_file():
        return load_dataset_file(path, max_line_bytes=settings.max_line_bytes)
    shipped = _shipped_path(str(dataset))
    if shipped is not None and shipped.is_file():
        return load_dataset_file(shipped, max_line_bytes=settings.max_line_bytes)
    if path.suffix or "/" in str(dataset):
        raise DatasetFormatError(str(dataset), None, "no such file")
    _prepare_database()
    with session_scope() as session:
        found = latest_dataset(session=session, name=str(dataset))
        if found is None or found.id is None:
            raise DatasetFormatError(
                str(dataset), None, "no such file, no shipped dataset and no stored dataset "
                f"of that name (shipped: {', '.join(sorted(_shipped_names()))})"
            )
        items = [
            {"key": i.key, "position": i.position, "input": i.input, "expected": i.expected,
             "meta": i.meta, "assertions": i.assertions, "tools": i.tools}
            for i in stored_items(session=session, dataset_id=found.id)
        ]
        return ParsedDataset(found.name, found.version, found.source or found.name, items)


def _shipped_path(name: str) -> Path | None:
    """NAME.jsonl inside the datasets folder, or None: a name never leaves the folder
    (`../x`, `/etc/x` and links out of it are not names; give a path as a path)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        return None
    folder = shipped_datasets_dir().resolve()
    candidate = (folder / f"{name}.jsonl").resolve()
    return candidate if candidate.parent == folder else None


def _check_params(model_params: dict[str, Any] | None) -> dict[str, Any]:
    """The model parameters, refused if one carries a credential: a secret-looking name
    (api_key, access_token; not max_tokens), a header mapping (extra_headers, headers,
    default_headers, ...) with an Authorization, *api-key*, *token*, *secret* or cookie
    header, or a value shaped like one (Bearer/Basic, sk-...). They are stored."""
    from workers.runtime.logsafe import secret_param

    params = dict(model_params or {})
    for key, value in params.items():
        why = secret_param(str(key), value)
        if why is not None:
            raise InputError(
                f"model parameter {key!r} looks like a secret ({why}): parameters are stored "
                "with the experiment and shown in reports; keep keys in the environment: the "
                "provider's key as e.g. OPENAI_API_KEY (litellm sends it), a gateway's header "
                "as a reference to a variable, e.g. --param 'extra_headers={\"Authorization\": "
                "\"env:GATEWAY_AUTH\"}' with GATEWAY_AUTH set where the model is called"
            )
    try:
        json.dumps(params)
    except TypeError as exc:
        raise InputError(f"model parameters must be JSON values: {exc}") from None
    return params


def _validate_items(parsed: ParsedDataset, prompt: str | None, needs_expected: list[str],
                    check_prompt: bool) -> None:
    from workers.errors import UnknownScorer
    from workers.offline.prompt import DEFAULT_TEMPLATE, check_template
    from workers.scorers.registry import bind_from_data

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


_prepared: set[str] = set()
_prepare_lock = threading.Lock()


def _prepare_database() -> None:
    """Migrate a local SQLite file on first use (embedded mode); elsewhere, check that the
    database is migrated. Done once per database per process."""
    settings = get_settings()
    url = settings.database_url
    if url in _prepared:
        return
    with _prepare_lock:
        if url in _prepared:
            return
        if settings.embedded and url.startswith("sqlite"):
            upgrade()  # a local SQLite file is created and migrated on first use
        else:
            ensure_migrated()
        _prepared.add(url)


def _store(parsed: ParsedDataset, experiment: Experiment) -> tuple[int, list[int]]:
    with session_scope() as session:
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


def _shipped_names() -> list[str]:
    return [p.stem for p in shipped_datasets_dir().glob("*.jsonl")]


def dispatch(experiment_id: int, task: str, calls: list[tuple], *,
             kwargs: dict[str, Any] | None = None, start: bool = False) -> None:
    """Run `task` for every argument tuple: enqueued to the broker (distributed) or on a
    thread pool of this process (embedded). Call after the rows it needs are committed.
    `start`: mark the experiment running (distributed: in the transaction that stores the
    tasks' leases, so a producer killed mid-enqueue leaves a pending experiment to resume
    or a running one whose every task is leased).

    (experiment, item, repeat) calls of evalq.run_item are grouped into evalq.run_items
    chunks of EVALQ_CHUNK_SIZE (one per item when the experiment has a cost budget)."""
    settings = get_settings()
    extra = kwargs or {}
    if task == "evalq.run_item":
        size = 1 if _has_budget(experiment_id) else settings.chunk_size
        pairs = [[c[1], c[2]] for c in calls]
        task = "evalq.run_items"
        calls = [(experiment_id, pairs[i:i + size]) for i in range(0, len(pairs), size)]
    if settings.embedded:
        from workers.offline.chunks import execute_chunk
        from workers.offline.rescore import rescore_result

        if start:
            with session_scope() as session:
                mark_experiment(session=session, experiment_id=experiment_id,
                                status=ExperimentStatus.RUNNING)
        local: Callable[..., Any] = execute_chunk if task == "evalq.run_items" else rescore_result
        chunk = max(len(c[1]) for c in calls) if task == "evalq.run_items" and calls else 1
        threads = max(1, min(64, (2 if chunk > 1 else 1) * settings.concurrency // chunk))
        embedded.start(experiment_id, lambda *a: local(*a, **extra), calls, threads)
    else:
        _send(experiment_id, task, calls, extra, start)


def _has_budget(experiment_id: int) -> bool:
    with session_scope() as session:
        return get_experiment(session=session, experiment_id=experiment_id).max_cost_usd \
            is not None


def _send(experiment_id: int, task: str, calls: list[tuple], kwargs: dict[str, Any],
          start: bool) -> None:
    from workers.delivery.dispatch import send_tasks

    def mark_running(session: Session) -> None:
        if start:
            mark_experiment(session=session, experiment_id=experiment_id,
                            status=ExperimentStatus.RUNNING)

    try:
        send_tasks(task, calls, kwargs=kwargs, experiment_id=experiment_id,
                   before_commit=mark_running)
    except Exception as exc:  # noqa: BLE001 - kombu raises many connection error types
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            raise
        from workers.delivery.dispatch import forget_unsent

        with session_scope() as session:
            forget_unsent(session=session, experiment_id=experiment_id)
            mark_experiment(session=session, experiment_id=experiment_id,
                            status=ExperimentStatus.FAILED, error=f"enqueue failed: {exc}")
        raise EnqueueError(
            f"could not send experiment {experiment_id}'s tasks to the broker "
            f"({type(exc).__name__}: {exc}); check EVALQ_BROKER_URL and that the broker is "
            "running"
        ) from exc


def _default_scorers(parsed: ParsedDataset) -> list[str | dict[str, Any]]:
    """exact_match when every case has an expected answer; otherwise assertions only."""
    if all(item["expected"] is not None for item in parsed.items):
        return ["exact_match"]
    if any(item["assertions"] for item in parsed.items):
        return []
    raise InputError(
        f"{parsed.source}: nothing to score: give --scorer, or add \"expected\" or "
        "\"assertions\" to the test cases"
    )


def _check_model(model: str, api_base: str | None) -> None:
    """Refuse a model name litellm cannot route, before anything is written."""
    if model.startswith("evalq/"):
        return
    from workers.llm.calls import setup_litellm

    litellm = setup_litellm()
    try:
        litellm.get_llm_provider(model=model, api_base=api_base)
    except Exception as exc:  # noqa: BLE001 - litellm raises several types for this
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc)
        raise InputError(
            f"unknown model {model!r}: litellm cannot tell its provider ({reason}); name it "
            "provider/model, e.g. openai/gpt-4o-mini or anthropic/claude-3-5-haiku-latest"
        ) from None


def _check_shared_services(settings: Any) -> None:
    """Rate limits shared through Redis need a Redis (EVALQ_CACHE_URL with RabbitMQ)."""
    from workers.llm.redis_url import RedisRequired, require_shared_rate_limits

    try:
        require_shared_rate_limits(settings)
    except RedisRequired as exc:
        raise InputError(str(exc)) from None


def _check_target(target: str | None, prompt: str | None) -> None:
    from workers.offline.targets import load_callable

    if target is None:
        return
    if prompt is not None:
        raise InputError("a prompt template applies to model targets only, not to --target")
    try:
        load_callable(target)
    except WorkerError as exc:
        raise InputError(str(exc)) from None


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
    """Validate everything, store the dataset and a new experiment, then enqueue one task
    per (item, repeat). Returns the experiment id. Nothing is written if any input is bad.

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
    params = _check_params(model_params)
    if api_base is not None:
        from workers.runtime.logsafe import strip_url, url_secret

        if (why := url_secret(api_base)) is not None:
            raise InputError(
                f"the API base URL {strip_url(api_base)} (--api-base) is refused: {why}, and "
                "it is stored with the experiment and shown in reports; give it without the "
                "credential and keep the credential in the environment: the provider's key as "
                "e.g. OPENAI_API_KEY (sent as a Bearer token), a gateway's header as "
                "--param 'extra_headers={\"Authorization\": \"env:GATEWAY_AUTH\"}' with "
                "GATEWAY_AUTH set where the model is called"
            )
    _check_target(target, prompt)
    if target is None:
        _check_model(model or settings.default_model, api_base)
    if max_cost_usd is not None and max_cost_usd <= 0:
        raise InputError(f"the cost budget must be above 0, got {max_cost_usd}")
    if cache not in ("auto", "on", "off"):
        raise InputError(f"cache must be auto, on or off, got {cache!r}")
    _check_shared_services(settings)
    if scorers is not None:
        resolved = _resolve(scorers)
    parsed = _resolve_dataset(dataset)
    if scorers is None:
        resolved = _resolve(_default_scorers(parsed))
    needs = [s.label for s in resolved if s.needs_expected]
    _validate_items(parsed, prompt, needs, check_prompt=target is None)
    _prepare_database()
    experiment = Experiment(
        name=name or "", dataset_id=0, target=target,
        model=target or model or settings.default_model, api_base=api_base,
        prompt_template=prompt, model_params=params, scorers=[s.spec() for s in resolved],
        repeats=repeats, mode="embedded" if settings.embedded else "distributed",
        cache_mode=cache, max_cost_usd=max_cost_usd,
    )
    experiment_id, item_ids = _store(parsed, experiment)
    tasks = [(item_id, rep) for rep in range(repeats) for item_id in item_ids]
    dispatch(experiment_id, "evalq.run_item", [(experiment_id, i, r) for i, r in tasks],
             start=True)
    log.info("experiment %s: %d tasks %s", experiment_id, len(tasks),
             "running in-process" if settings.embedded else "enqueued")
    return experiment_id


def _resolve(specs: Sequence[str | dict[str, Any]]) -> list[Any]:
    from workers.scorers import resolve_scorers

    try:
        return resolve_scorers(list(specs))
    except WorkerError as exc:
        raise InputError(str(exc)) from None


def progress(experiment_id: int) -> dict[str, Any]:
    """Status and counts of an experiment, read from the database."""
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        return {"experiment_id": exp.id, "status": exp.status, "total": exp.total_items,
                "done": exp.n_done, "failed": exp.n_failed,
                "pending": max(0, exp.total_items - exp.n_done - exp.n_failed),
                "error": exp.error}


def wait_for_experiment(
    experiment_id: int,
    timeout: float | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_no_worker: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Block until the experiment is completed or failed (read from the database, never
    from Celery results) and return its report summary. Raises WaitTimeout.

    `on_no_worker` (distributed mode): called once with a message saying so, and what to
    do, when no live worker consumes the experiment's queue while items wait (checked at
    once and every few seconds; said within about 5 s). The wait goes on."""
    from scheduler.reports.experiment import experiment_report

    settings = get_settings()
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = None
    if on_no_worker is not None and not settings.embedded:
        watch = NoWorkerWatch(experiment_id)
    while True:
        state = progress(experiment_id)
        if on_progress is not None:
            on_progress(state)
        if state["status"] in DONE_STATUSES:
            return experiment_report(experiment_id)
        if watch is not None and on_no_worker is not None:
            message = watch.check(state)
            if message is not None:
                on_no_worker(message)
        local = embedded.running_here(experiment_id)
        if local is not None and local.done() and local.exception() is not None:
            raise local.exception()  # type: ignore[misc]
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(
                f"experiment {experiment_id} is still {state['status']} after {timeout} s "
                f"({state['done'] + state['failed']}/{state['total']} done); it keeps running: "
                f"check later with `evalq status {experiment_id}`"
            )
        time.sleep(settings.poll_interval_s)


def dataset_items(experiment_id: int) -> dict[int, DatasetItem]:
    """The test cases of an experiment's dataset, by item id."""
    from sqlmodel import select

    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        rows = session.exec(select(DatasetItem).where(DatasetItem.dataset_id == exp.dataset_id))
        return {row.id: row for row in rows if row.id is not None}
