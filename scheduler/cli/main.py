"""The `evalq` app: `run`, `status`, `list`, `scorers`, `demo` and `db`, and the console entry
point; the other commands are added from their modules (experiments, ingest, workers,
evaluators)."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from sqlmodel import col, select

from models.crud import headline_scores, list_experiments
from models.db import get_engine, safe_url, session_scope
from models.migrate import current_revision, head_revision, upgrade
from models.settings import get_settings
from models.tables import Dataset
from scheduler.api import wait_for_experiment
from scheduler.cli import render
from scheduler.cli.common import (
    emit_json,
    handle_errors,
    parse_params,
    parse_scorer,
    warn_no_worker,
)
from scheduler.cli.evaluators import online_app
from scheduler.cli.experiments import MaxFailures, check_gate, run_exit_code, run_gate
from scheduler.cli.experiments import register as register_experiment_commands
from scheduler.cli.ingest import register as register_ingest_commands
from scheduler.cli.workers import print_liveness
from scheduler.cli.workers import register as register_worker_commands
from scheduler.errors import InputError
from scheduler.experiments.enqueue import enqueue_offline_run
from scheduler.experiments.wait import DONE_STATUSES, progress
from scheduler.liveness import experiment_liveness
from workers.runtime.logsafe import install_log_filters
from workers.scorers import known_scorers

app = typer.Typer(
    name="evalq",
    help="Offline and online evaluation of LLM systems on a distributed task queue.\n\n"
    "Embedded mode (no EVALQ_BROKER_URL): runs in this process with a SQLite file. "
    "Distributed mode: EVALQ_BROKER_URL=redis://... and EVALQ_DATABASE_URL=postgresql+psycopg://"
    "..., with workers started by `celery -A workers worker`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(online_app, name="online")


def _wait_and_report(experiment_id: int, total: int, *, as_json: bool,
                     timeout: float | None) -> dict[str, Any]:
    show_bar = not as_json and render.err.is_terminal or os.environ.get("EVALQ_PROGRESS") == "1"
    with render.progress_bar(total, enabled=show_bar) as update:
        return wait_for_experiment(experiment_id, timeout=timeout, on_progress=update,
                                   on_no_worker=warn_no_worker)


def _summary_json(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment_id": report["experiment_id"], "status": report["status"],
        "counts": report["counts"],
        "scores": {k: v["mean"] for k, v in report["scorers"].items()},
        "report": report,
    }


@app.command()
@handle_errors
def run(
    dataset: Annotated[str, typer.Argument(help="A JSONL file, or the name of a shipped or "
                                           "stored dataset (e.g. demo).")],
    model: Annotated[str | None, typer.Option(help="litellm model name, e.g. openai/gpt-4o-mini "
                                              "(default: EVALQ_DEFAULT_MODEL).")] = None,
    scorer: Annotated[list[str] | None, typer.Option(
        "--scorer", "-s", help="Scorer name, or JSON like '{\"type\": \"regex\", \"pattern\": "
        "\"^\\\\d+$\"}', or module:function. Repeatable. Default: exact_match when "
        "every case has expected, else the cases' assertions only.")] = None,
    target: Annotated[str | None, typer.Option(
        help="Evaluate a Python callable (an agent, a pipeline) instead of a model: "
        "package.module:function. It gets each case's input.")] = None,
    prompt: Annotated[str | None, typer.Option(
        help="Prompt template with {input} or the input object's fields, e.g. "
        "'Answer briefly: {question}'.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(
        help="Read the prompt template from this file.", exists=True, dir_okay=False)] = None,
    repeats: Annotated[int, typer.Option(help="Run every item this many times.")] = 1,
    name: Annotated[str | None, typer.Option(help="A name for the experiment.")] = None,
    api_base: Annotated[str | None, typer.Option(
        help="Base URL of an OpenAI-compatible server (use with an openai/ model).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Model parameter key=value (JSON values), e.g. temperature=0. "
        "Repeatable. Never put keys here: litellm reads them from the environment.")] = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Print the experiment id and return once tasks are enqueued.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Stop waiting after this many "
                                                  "seconds (the run goes on).")] = None,
    cache: Annotated[bool | None, typer.Option(
        "--cache/--no-cache", help="Reuse stored model responses (same model, messages, "
        "parameters, repeat). Default: on for temperature-0 calls only.")] = None,
    fail_under: Annotated[list[str] | None, typer.Option(
        "--fail-under", help="CI gate: exit 1 unless SCORER's mean >= VALUE, e.g. "
        "exact_match=0.9. Repeatable.")] = None,
    baseline: Annotated[int | None, typer.Option(
        help="Compare with this experiment (paired bootstrap) after the run.")] = None,
    fail_on_regression: Annotated[bool, typer.Option(
        "--fail-on-regression", help="CI gate: exit 1 if any scorer regressed significantly "
        "against --baseline.")] = False,
    junit: Annotated[Path | None, typer.Option(
        help="Write a JUnit XML report (one testcase per item x scorer).")] = None,
    max_cost: Annotated[float | None, typer.Option(
        help="Budget in USD: once spent (target + judge), no new model call starts; the "
        "rest is marked skipped_budget and the experiment ends budget_exceeded.")] = None,
    max_failures: MaxFailures = 0,
) -> None:
    """Run a dataset against a model, score every output and print the report.

    Exit codes: 0 done, no item failed (or at most --max-failures) and the gate holds;
    1 the experiment failed (reason on stderr), items failed, its --max-cost budget ran
    out before every item ran (budget_exceeded), or the gate failed; 2 bad input
    (a --fail-under label that is no scorer of the run included): nothing was run."""
    if prompt and prompt_file:
        raise InputError("give --prompt or --prompt-file, not both")
    template = prompt_file.read_text(encoding="utf-8") if prompt_file else prompt
    scorers = [parse_scorer(s) for s in scorer] if scorer else None
    check_gate(dataset, scorers, fail_under=fail_under or [], baseline=baseline,
               fail_on_regression=fail_on_regression)  # before anything is run or paid
    experiment_id = enqueue_offline_run(
        dataset=dataset, model=model, scorers=scorers,
        prompt=template, repeats=repeats, model_params=parse_params(param or []), name=name,
        api_base=api_base, target=target,
        cache="auto" if cache is None else ("on" if cache else "off"), max_cost_usd=max_cost,
    )
    embedded = get_settings().embedded
    if no_wait and not embedded:
        emit_json({"experiment_id": experiment_id, "status": "running"}) if as_json else \
            render.out.print(f"experiment {experiment_id} enqueued; follow it with "
                             f"`evalq status {experiment_id}`")
        return
    if no_wait:
        render.err.print("embedded mode (no EVALQ_BROKER_URL): running in this process "
                         "before returning")
    if not as_json:
        render.err.print(f"experiment {experiment_id} started")
    total = progress(experiment_id)["total"]
    report = _wait_and_report(experiment_id, total, as_json=as_json, timeout=timeout)
    gate = run_gate(report, fail_under=fail_under or [], baseline=baseline,
                    fail_on_regression=fail_on_regression, junit=junit)
    if as_json:
        out = _summary_json(report)
        if gate is not None:
            out["gate"] = {"ok": gate.ok, "reasons": gate.reasons, "line": gate.line}
        emit_json(out)
    elif no_wait:
        render.out.print(f"experiment {experiment_id} {report['status']}")
    else:
        render.print_report(report)
    if gate is not None and not as_json:
        render.out.print(gate.line, highlight=False)
    code = run_exit_code(report, gate, max_failures=max_failures)
    if code:
        raise typer.Exit(code)


@app.command()
@handle_errors
def status(
    experiment_id: Annotated[int, typer.Argument(help="Experiment id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Progress of an experiment: status and done / failed / skipped by budget / pending
    counts (failed: the target errored; skipped_budget: not run, the --max-cost budget was
    spent); in distributed mode also the messages waiting in each queue, the experiment's
    queued and running tasks, and the live workers (those holding its work by name)."""
    state = progress(experiment_id)
    extra = experiment_liveness(experiment_id, pending=0 if state["status"] in DONE_STATUSES
                                else state["pending"])
    if as_json:
        emit_json({**state, **extra})
        return
    render.print_status(state)
    print_liveness(extra)


@app.command("list")
@handle_errors
def list_(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The newest experiments: name, dataset version, model, status, headline scores,
    cost, created."""
    with session_scope() as session:
        experiments = list_experiments(session=session, limit=limit)
        scores = headline_scores(session=session,
                                 experiment_ids=[e.id for e in experiments if e.id])
        versions = {d.id: f"{d.name}@{d.version[:8]}" for d in session.exec(
            select(Dataset).where(col(Dataset.id).in_({e.dataset_id for e in experiments})))}
        rows = [
            {"id": e.id, "name": e.name, "dataset": versions.get(e.dataset_id),
             "model": e.model, "status": e.status, "done": e.n_done, "failed": e.n_failed,
             "total": e.total_items, "scores": scores.get(e.id or 0, {}),
             "cost_usd": round(e.cost_usd + e.judge_cost_usd, 6),
             "created_at": e.created_at.isoformat()}
            for e in experiments
        ]
    emit_json(rows) if as_json else render.print_experiments(rows)


@app.command()
@handle_errors
def scorers(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Every registered scorer with its version and parameters."""
    listing: dict[str, dict[str, Any]] = {
        name: {"version": info.version, "description": info.description,
               "params": {k: {"required": v is inspect.Parameter.empty,
                              "default": None if v is inspect.Parameter.empty else v}
                          for k, v in info.parameters().items()}}
        for name, info in known_scorers().items()
    }
    if as_json:
        emit_json(listing)
        return
    for name, info in listing.items():
        params = ", ".join(
            f"{k} (required)" if p["required"] else f"{k}={p['default']!r}"
            for k, p in info["params"].items()
        ) or "no parameters"
        render.out.print(f"[bold]{escape(name)}[/bold] v{escape(str(info['version']))}: "
                         f"{escape(str(info['description']))}\n    {escape(params)}")


@app.command()
@handle_errors
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the shipped demo dataset on the built-in toy model: no key, no broker, no network."""
    settings = get_settings()
    if not settings.embedded:
        os.environ.pop("EVALQ_BROKER_URL", None)
        settings.broker_url = None  # the demo always runs embedded
    experiment_id = enqueue_offline_run(
        dataset="demo", model="evalq/toy", scorers=["exact_match", "contains"],
        prompt="{question}", name="demo",
    )
    report_data = _wait_and_report(experiment_id, progress(experiment_id)["total"],
                                   as_json=as_json, timeout=None)
    if as_json:
        emit_json(_summary_json(report_data))
        return
    render.print_report(report_data)
    render.out.print(
        f"\nNext: `evalq report {experiment_id} --json`, or run your own dataset: "
        "`evalq run datasets/capitals.jsonl --model evalq/toy --prompt '{question}'`"
    )


register_ingest_commands(app)


@db_app.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply every pending migration to EVALQ_DATABASE_URL (safe to run again)."""
    before, after = upgrade()
    url = safe_url(get_settings().database_url)
    if before == after:
        render.out.print(f"{url} is up to date (revision {after})")
    else:
        render.out.print(f"{url} upgraded from {before or 'empty'} to revision {after}")


@db_app.command("current")
@handle_errors
def db_current() -> None:
    """Show the revision the database is at and the one this evalq needs."""
    render.out.print(f"database: {current_revision(get_engine()) or 'empty'}, "
                     f"code: {head_revision()}")


register_experiment_commands(app)
register_worker_commands(app)


def main() -> None:
    """Console entry point."""
    # Like `python -m` and `celery -A`: --target and module:function scorers may name
    # modules of the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    logging.basicConfig(level=get_settings().log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_filters()  # URLs logged without query strings or passwords, at every level
    app()


if __name__ == "__main__":
    main()
