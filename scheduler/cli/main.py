"""The `evalq` app: every command's arguments, options and help (`evalq online ...` too), and
the console entry point.

Each command's body imports its implementation when the command runs (the `# lazy:` line),
from runs.py (run, demo), reads.py (list, report), scorers.py, db.py, workers.py
(workers, status), experiments.py (compare, rerun, resume, rescore), ingest.py (ingest,
serve) or evaluators.py (online): `evalq --help` and `evalq CMD --help` import typer and
this module only, never the database layer, Celery or the scorers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from scheduler.cli.common import configure_logging_before_commands, handle_errors

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ExperimentId = Annotated[int, typer.Argument(help="Experiment id.")]
MaxFailures = Annotated[int, typer.Option(
    "--max-failures", min=0, help="Exit 0 even if up to N items failed (their model call or "
    "target errored). Default 0: any failed item exits 1. An experiment stopped early on a "
    "permanent error (missing key, unknown model...) always exits 1.")]

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
online_app = typer.Typer(
    help="Online evals: evaluators that score sampled production runs on a schedule "
    "(Celery beat runs the tick: `celery -A workers beat`).",
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(online_app, name="online")


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
    from scheduler.cli.runs import run as work  # lazy: enqueue path, database (~0.5 s)

    work(dataset, model=model, scorer=scorer, target=target, prompt=prompt,
         prompt_file=prompt_file, repeats=repeats, name=name, api_base=api_base, param=param,
         no_wait=no_wait, as_json=as_json, timeout=timeout, cache=cache,
         fail_under=fail_under, baseline=baseline, fail_on_regression=fail_on_regression,
         junit=junit, max_cost=max_cost, max_failures=max_failures)


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
    from scheduler.cli.workers import status as work  # lazy: the database layer

    work(experiment_id, as_json=as_json)


@app.command("list")
@handle_errors
def list_(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The newest experiments: name, dataset version, model, status, headline scores,
    cost, created."""
    from scheduler.cli.reads import list_experiments as work  # lazy: the database layer

    work(limit=limit, as_json=as_json)


@app.command()
@handle_errors
def scorers(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Every registered scorer with its version and parameters."""
    from scheduler.cli.scorers import scorers as work  # lazy: the scorer registry

    work(as_json=as_json)


@app.command()
@handle_errors
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the shipped demo dataset on the built-in toy model: no key, no broker, no network."""
    from scheduler.cli.runs import demo as work  # lazy: enqueue path, database

    work(as_json=as_json)


@app.command()
@handle_errors
def ingest(
    file: Annotated[Path, typer.Argument(help="JSONL file of production runs, one a line.",
                                         exists=True, dir_okay=False)],
    source: Annotated[str, typer.Option(help="Source name of these runs (a run's own "
                                        "\"source\" wins).")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Store production runs for online evals (idempotent on source + run id). Bad lines
    are reported as FILE:LINE and skipped; good lines are kept. Exit 2 if any line was bad."""
    from scheduler.cli.ingest import ingest as work  # lazy: the database layer

    work(file, source=source, as_json=as_json)


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """HTTP ingestion endpoint: POST /runs (one run, a list, or {"runs": [...]}) with
    `Authorization: Bearer $EVALQ_INGEST_TOKEN`; GET /health."""
    from scheduler.cli.ingest import serve as work  # lazy: the HTTP server, the database

    work(host=host, port=port)


@app.command()
@handle_errors
def report(
    experiment_id: ExperimentId,
    by: Annotated[str | None, typer.Option(
        help="Break scores down by this metadata field (e.g. category).")] = None,
    html: Annotated[Path | None, typer.Option(
        help="Also write a self-contained HTML report (charts, filterable items) here.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Scores (mean, standard error, 95% t interval, pass rate), counts, latency
    p50/p95/p99, tokens, cost, wall time, items/s, and an optional breakdown."""
    from scheduler.cli.reads import report as work  # lazy: the database, the reports

    work(experiment_id, by=by, html=html, as_json=as_json)


@app.command()
@handle_errors
def compare(
    baseline: Annotated[int, typer.Argument(help="Baseline experiment id.")],
    candidate: Annotated[int, typer.Argument(help="Candidate experiment id.")],
    html: Annotated[Path | None, typer.Option(help="Also write an HTML comparison here.")
                    ] = None,
    pairwise_model: Annotated[str | None, typer.Option(
        help="Also have this LLM judge pick the better output of each item "
        "(llm_pairwise, positions swapped).")] = None,
    pairwise_api_base: Annotated[str | None, typer.Option(
        help="Base URL of the pairwise judge.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    as_json: AsJson = False,
) -> None:
    """What changed between two experiments: per scorer the difference of means with a
    paired bootstrap 95% CI and a verdict, items that flipped, cost and latency deltas."""
    from scheduler.cli.experiments import compare as work  # lazy: the database, the reports

    work(baseline, candidate, html=html, pairwise_model=pairwise_model,
         pairwise_api_base=pairwise_api_base, bootstrap=bootstrap, as_json=as_json)


@app.command()
@handle_errors
def rerun(
    experiment_id: ExperimentId,
    failed: Annotated[bool, typer.Option(
        "--failed", help="Re-run the items whose target failed (required: items that "
        "scored low are not re-run).")] = False,
    wait: Annotated[bool, typer.Option(help="Wait and print the report.")] = True,
    as_json: AsJson = False,
) -> None:
    """Re-run failed items in the same experiment."""
    from scheduler.cli.experiments import rerun as work  # lazy: enqueue path, database

    work(experiment_id, failed=failed, wait=wait, as_json=as_json)


@app.command()
@handle_errors
def resume(
    experiment_id: ExperimentId,
    wait: Annotated[bool, typer.Option(help="Wait and print the report.")] = True,
    as_json: AsJson = False,
) -> None:
    """Enqueue every item of the experiment that never finished (after a crash)."""
    from scheduler.cli.experiments import resume as work  # lazy: enqueue path, database

    work(experiment_id, wait=wait, as_json=as_json)


@app.command()
@handle_errors
def rescore(
    experiment_id: ExperimentId,
    scorer: Annotated[list[str], typer.Option(
        "--scorer", "-s", help="Scorer to add (name or JSON spec), repeatable. One the "
        "experiment already has (same type, version and parameters) is not added again.")],
    as_json: AsJson = False,
) -> None:
    """Add scorers to a completed experiment, scoring its stored outputs (the target is
    not called again). Idempotent: a scorer it already has is said and skipped."""
    from scheduler.cli.experiments import rescore as work  # lazy: enqueue path, database

    work(experiment_id, scorer=scorer, as_json=as_json)


@app.command()
@handle_errors
def workers(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Live workers (a heartbeat in the last EVALQ_WORKER_DEAD_AFTER_S seconds): host,
    pid, queues, concurrency, last heartbeat, tasks held and their experiments; and the
    workers that stopped or died in the last hour."""
    from scheduler.cli.workers import workers as work  # lazy: the database, the broker

    work(as_json=as_json)


@db_app.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply every pending migration to EVALQ_DATABASE_URL (safe to run again)."""
    from scheduler.cli.db import db_upgrade as work  # lazy: alembic, the database

    work()


@db_app.command("current")
@handle_errors
def db_current() -> None:
    """Show the revision the database is at and the one this evalq needs."""
    from scheduler.cli.db import db_current as work  # lazy: alembic, the database

    work()



@online_app.command("add")
@handle_errors
def online_add(
    name: Annotated[str, typer.Argument(help="A unique name for the evaluator.")],
    scorer: Annotated[list[str], typer.Option(
        "--scorer", "-s", help="Scorer name or JSON spec (repeatable), e.g. plan_run_success "
        "or '{\"type\": \"llm_rubric\", \"criteria\": \"...\"}'.")],
    sample_rate: Annotated[float, typer.Option(help="Fraction of runs scored, in (0, 1]; "
                                               "deterministic per run.")] = 1.0,
    every: Annotated[str, typer.Option(help="How often a batch is claimed: 30s, 5m, 1h.")
                     ] = "60s",
    batch_size: Annotated[int, typer.Option(help="Most runs claimed per tick.")] = 200,
    filter_: Annotated[list[str] | None, typer.Option(
        "--filter", help="key=value on source, status, model or a metadata key "
        "(repeatable; all must match).")] = None,
    backfill_since: Annotated[str | None, typer.Option(
        help="Also score runs created since this time (ISO 8601, or a duration ago: 24h). "
        "Default: only runs created from now on.")] = None,
    alert_threshold: Annotated[float | None, typer.Option(
        help="Alert when a window's mean score falls below this (0-1).")] = None,
    alert_window: Annotated[str, typer.Option(help="Window of the alert check.")] = "1h",
    webhook: Annotated[str | None, typer.Option(
        help="POST alerts to this URL (JSON), with retries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Add an online evaluator; it starts on the next beat tick, no restart needed."""
    from scheduler.cli.evaluators import add as work  # lazy: the database layer

    work(name, scorer=scorer, sample_rate=sample_rate, every=every, batch_size=batch_size,
         filter_=filter_, backfill_since=backfill_since, alert_threshold=alert_threshold,
         alert_window=alert_window, webhook=webhook, as_json=as_json)


@online_app.command("list")
@handle_errors
def online_list(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False
          ) -> None:
    """Every online evaluator."""
    from scheduler.cli.evaluators import list_ as work  # lazy: the database layer

    work(as_json=as_json)


@online_app.command("pause")
@handle_errors
def online_pause(name: Annotated[str, typer.Argument(help="Evaluator name.")]) -> None:
    """Stop claiming new runs (scores already claimed still complete)."""
    from scheduler.cli.evaluators import pause as work  # lazy: the database layer

    work(name)


@online_app.command("resume")
@handle_errors
def online_resume(name: Annotated[str, typer.Argument(help="Evaluator name.")]) -> None:
    """Claim again, from where it stopped."""
    from scheduler.cli.evaluators import resume as work  # lazy: the database layer

    work(name)


@online_app.command("remove")
@handle_errors
def online_remove(name: Annotated[str, typer.Argument(help="Evaluator name.")]) -> None:
    """Delete an evaluator with its claims, alerts and scores."""
    from scheduler.cli.evaluators import remove as work  # lazy: the database layer

    work(name)


@online_app.command("tick")
@handle_errors
def online_tick(
    name: Annotated[str | None, typer.Argument(help="Only this evaluator.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run one tick now, whether due or not (embedded mode scores here; distributed mode
    enqueues for the workers). Beat does this on schedule."""
    from scheduler.cli.evaluators import tick as work  # lazy: the database layer

    work(name, as_json=as_json)


@online_app.command("report")
@handle_errors
def online_report(
    name: Annotated[str, typer.Argument(help="Evaluator name.")],
    window: Annotated[str, typer.Option(help="Window length: 15m, 1h, 1d.")] = "1h",
    since: Annotated[str | None, typer.Option(
        help="Start (ISO 8601 or a duration ago, e.g. 24h). Default: 24h ago.")] = None,
    until: Annotated[str | None, typer.Option(help="End (default: now).")] = None,
    baseline_since: Annotated[str | None, typer.Option(
        help="Baseline period start: drift is a window mean outside its 95% CI.")] = None,
    baseline_until: Annotated[str | None, typer.Option(help="Baseline period end.")] = None,
    baseline_experiment: Annotated[int | None, typer.Option(
        help="Use an offline experiment's scores as the baseline.")] = None,
    html: Annotated[Path | None, typer.Option(
        help="Also write a self-contained HTML page: each scorer's windowed mean with its "
        "confidence band, drift marked.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per window: runs scored, mean per scorer with its 95% CI, pass rate, drift flag."""
    from scheduler.cli.evaluators import report as work  # lazy: the database layer

    work(name, window=window, since=since, until=until, baseline_since=baseline_since,
         baseline_until=baseline_until, baseline_experiment=baseline_experiment, html=html,
         as_json=as_json)


def main() -> None:
    """Console entry point."""
    # Like `python -m` and `celery -A`: --target and module:function scorers may name
    # modules of the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # Logging (level from the settings, secrets filtered out of every line) is set up
    # before a command's body runs, never for --help or a usage error.
    configure_logging_before_commands()
    app()


if __name__ == "__main__":
    main()
