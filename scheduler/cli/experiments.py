"""What `evalq compare | rerun | resume | rescore` do (main.py declares their arguments and
imports this module when one of them runs), and the CI gate and exit code of `evalq run`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from models.crud import get_experiment
from models.db import session_scope
from models.errors import NotFound
from models.tables import ExperimentStatus, Result, ResultStatus
from scheduler.api import wait_for_experiment
from scheduler.checks import resolve_scorer_specs
from scheduler.cli import render
from scheduler.cli.common import emit_json, parse_scorer, warn_no_worker
from scheduler.errors import InputError
from scheduler.experiments.datasets import resolve_dataset
from scheduler.experiments.enqueue import default_scorers
from scheduler.experiments.reruns import rerun_failed, wait_for_rescore
from scheduler.experiments.reruns import rescore as add_scorers
from scheduler.experiments.reruns import resume as resume_run
from scheduler.reports.compare import compare_experiments
from scheduler.reports.experiment import experiment_report, load_items
from scheduler.reports.gate import check_labels, evaluate_gate, parse_thresholds
from scheduler.reports.html import render_compare_html, write_html
from scheduler.reports.junit import write_junit
from workers.llm.calls import missing_credentials
from workers.scoring import assertion_scorers


def compare(baseline: int, candidate: int, *, html: Path | None, pairwise_model: str | None,
            pairwise_api_base: str | None, bootstrap: int, as_json: bool) -> None:
    """What changed between two experiments: per scorer the difference of means with a
    paired bootstrap 95% CI and a verdict, items that flipped, cost and latency deltas."""
    pairwise = None
    if pairwise_model or pairwise_api_base:
        pairwise = {"model": pairwise_model, "api_base": pairwise_api_base}
    data = compare_experiments(baseline, candidate, n_boot=bootstrap, pairwise=pairwise)
    if html is not None:
        write_html(html, render_compare_html(data))
    if as_json:
        emit_json(data)
        return
    render.print_comparison(data)


def rerun(experiment_id: int, *, failed: bool, wait: bool, as_json: bool) -> None:
    """Re-run failed items in the same experiment."""
    if not failed:
        raise InputError("say what to re-run: `evalq rerun ID --failed`")
    count = rerun_failed(experiment_id)
    _after_enqueue(experiment_id, count, "failed items re-enqueued", wait, as_json)


def resume(experiment_id: int, *, wait: bool, as_json: bool) -> None:
    """Enqueue every item of the experiment that never finished (after a crash)."""
    count = resume_run(experiment_id)
    _after_enqueue(experiment_id, count, "unfinished items enqueued", wait, as_json)


def _after_enqueue(experiment_id: int, count: int, what: str, wait: bool, as_json: bool
                   ) -> None:
    if not as_json:
        render.err.print(f"experiment {experiment_id}: {count} {what}")
    if not wait or count == 0:
        if as_json:
            emit_json({"experiment_id": experiment_id, "enqueued": count})
        return
    data = wait_for_experiment(experiment_id, on_no_worker=warn_no_worker)
    emit_json({"experiment_id": experiment_id, "enqueued": count, "report": data}) \
        if as_json else render.print_report(data)


def rescore(experiment_id: int, *, scorer: list[str], as_json: bool) -> None:
    """Add scorers to a completed experiment, scoring its stored outputs (the target is
    not called again). Idempotent: a scorer it already has is said and skipped."""
    plan = add_scorers(experiment_id, [parse_scorer(s) for s in scorer])
    if not as_json:
        for label in plan.present:
            render.out.print(f"experiment {experiment_id} already has scorer {label} (same "
                             "type, version and parameters): not added again",
                             highlight=False, markup=False)
        if plan.added:
            render.err.print(f"experiment {experiment_id}: scoring with "
                             f"{', '.join(plan.added)}", highlight=False, markup=False)
    if not plan.added:
        if as_json:
            emit_json({"experiment_id": experiment_id, "added": [],
                       "already_present": plan.present})
        return
    wait_for_rescore(experiment_id, plan.added)
    data = experiment_report(experiment_id)
    emit_json({"experiment_id": experiment_id, "added": plan.added,
               "already_present": plan.present, "report": data}) \
        if as_json else render.print_report(data)


def run_labels(dataset: str, scorers: list[str | dict[str, Any]] | None) -> list[str] | None:
    """The scorer labels a run of `dataset` will have, as enqueue_offline_run resolves
    them: its scorers' labels (given, or the default: exact_match when every case has an
    expected answer, else none) and the assert:TYPE labels of the cases' assertions.
    None when the run would score nothing (enqueue refuses it, saying why)."""
    parsed = resolve_dataset(dataset)
    if scorers is None:
        try:
            scorers = default_scorers(parsed)
        except InputError:
            return None
    labels = [s.label for s in resolve_scorer_specs(scorers)]
    for item in parsed.items:
        labels += [s.label for s in assertion_scorers(item["assertions"] or [])]
    return sorted(set(labels))


def check_gate(dataset: str, scorers: list[str | dict[str, Any]] | None, *,
               fail_under: list[str], baseline: int | None, fail_on_regression: bool) -> None:
    """The gate options of `evalq run`, checked before anything is enqueued (InputError,
    exit 2): thresholds well formed and naming scorers of the run, --fail-on-regression
    with a --baseline that exists."""
    if fail_on_regression and baseline is None:
        raise InputError("--fail-on-regression needs --baseline EXPERIMENT_ID")
    thresholds = parse_thresholds(fail_under)
    if baseline is not None:
        try:
            with session_scope() as session:
                get_experiment(session=session, experiment_id=baseline)
        except NotFound as exc:
            raise InputError(f"--baseline {baseline}: {exc}") from None
    if thresholds:
        labels = run_labels(dataset, scorers)
        if labels is not None:
            check_labels(thresholds, labels)


def run_gate(report_data: dict[str, Any], *, fail_under: list[str], baseline: int | None,
             fail_on_regression: bool, junit: Path | None) -> Any:
    """The CI gate of `evalq run`: thresholds and regression against a baseline. Writes the
    JUnit file if asked. Returns the GateResult, or None when no gate was asked for."""
    experiment_id = report_data["experiment_id"]
    if junit is not None:
        write_junit(report_data, load_items(experiment_id)[2], junit)
    if fail_on_regression and baseline is None:
        raise InputError("--fail-on-regression needs --baseline EXPERIMENT_ID")
    if not fail_under and baseline is None:
        return None
    comparison = None
    if baseline is not None:
        comparison = compare_experiments(baseline, experiment_id)
    return evaluate_gate(report_data, fail_under=parse_thresholds(fail_under),
                         comparison=comparison, fail_on_regression=fail_on_regression)


_KEY_VARIABLE = re.compile(r"\b[A-Z][A-Z0-9_]*_API_KEY\b")


def next_step(error: str, experiment_id: int) -> str:
    """What to do about a model error (an "ErrorType: message" text or an experiment's
    failure reason), in one sentence."""
    where = ("in the environment of the process that calls the model (this shell in "
             "embedded mode, every worker in distributed mode)")
    if missing_credentials(error):
        named = _KEY_VARIABLE.search(error)
        key = named.group(0) if named else "the provider's API key (e.g. OPENAI_API_KEY)"
        return f"set {key} {where}, then run again"
    if "AuthenticationError" in error:
        return (f"the provider refused the API key: check it (e.g. OPENAI_API_KEY) {where}, "
                "and that it belongs to this provider or --api-base, then run again")
    if "PermissionDeniedError" in error:
        return ("the key may not use this model or endpoint: check the key's permissions "
                "(project, organisation) or pick another --model, then run again")
    if "NotFoundError" in error:
        return ("the provider does not know this model: check --model (provider/model, "
                "e.g. openai/gpt-4o-mini) and --api-base, then run again")
    if any(name in error for name in ("BadRequestError", "UnprocessableEntityError",
                                      "ContextWindowExceededError")):
        return ("the provider rejected the request: check --param values, the prompt "
                f"and the model's limits; `evalq report {experiment_id}` shows each item's "
                "error")
    return (f"`evalq report {experiment_id}` shows each item's error; "
            f"`evalq rerun {experiment_id} --failed` runs the failed items again")


def _first_error(experiment_id: int) -> str | None:
    """"ErrorType: message" of the experiment's first failed item, if any."""
    with session_scope() as session:
        row = session.execute(
            sa.select(col(Result.error_type), col(Result.error))
            .where(col(Result.experiment_id) == experiment_id,
                   col(Result.status) == ResultStatus.ERROR)
            .order_by(col(Result.id)).limit(1)).first()
    return None if row is None else f"{row[0] or 'error'}: {row[1] or ''}".strip()


def _say(text: str) -> None:
    render.err.print(text, highlight=False, soft_wrap=True, markup=False)


def run_exit_code(report_data: dict[str, Any], gate: Any, *, max_failures: int = 0) -> int:
    """The exit code of `evalq run` once the experiment is over: 1 when it failed (said on
    stderr with its reason and what to do), when more than `max_failures` items failed,
    when its cost budget ran out before every item ran (budget_exceeded: the scores cover
    only the items that ran), or when the gate failed; else 0."""
    experiment_id = report_data["experiment_id"]
    counts = report_data["counts"]
    if report_data["status"] == ExperimentStatus.FAILED:
        reason = report_data.get("error") or _first_error(experiment_id) or "no reason recorded"
        _say(f"error: experiment {experiment_id} failed ({counts['done']} done, "
             f"{counts['failed']} failed, {counts['pending']} not run): {reason[:1000]}")
        _say(f"next: {next_step(reason, experiment_id)}")
        return 1
    if counts["failed"] > max_failures:
        first = _first_error(experiment_id) or ""
        kinds = ", ".join(f"{k}×{v}" for k, v in (report_data.get("errors") or {}).items())
        _say(f"error: {counts['failed']} of {counts['total']} items of experiment "
             f"{experiment_id} failed ({kinds}), more than --max-failures {max_failures}; "
             f"first: {first[:1000]}")
        _say(f"next: {next_step(first, experiment_id)}")
        return 1
    if report_data["status"] == ExperimentStatus.BUDGET_EXCEEDED:
        budget = report_data.get("budget_usd")
        _say(f"error: experiment {experiment_id} spent its budget (--max-cost "
             f"{budget if budget is not None else '?'} USD): {counts.get('skipped_budget', 0)} "
             f"of {counts['total']} items were not run; its scores cover the "
             f"{counts['done']} that ran")
        _say("next: run again with a larger --max-cost (or none)")
        return 1
    return 0 if gate is None or gate.ok else 1

