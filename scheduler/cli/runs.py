"""What `evalq run` and `evalq demo` do (main.py declares their arguments and imports this
module when one of them runs): enqueue, wait with a progress bar, report, gate, exit code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from models.settings import get_settings
from scheduler.api import wait_for_experiment
from scheduler.cli import render
from scheduler.cli.common import emit_json, parse_params, parse_scorer, warn_no_worker
from scheduler.cli.experiments import check_gate, run_exit_code, run_gate
from scheduler.errors import InputError
from scheduler.experiments.enqueue import enqueue_offline_run
from scheduler.experiments.wait import progress


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


def run(dataset: str, *, model: str | None, scorer: list[str] | None, target: str | None,
        prompt: str | None, prompt_file: Path | None, repeats: int, name: str | None,
        api_base: str | None, param: list[str] | None, no_wait: bool, as_json: bool,
        timeout: float | None, cache: bool | None, fail_under: list[str] | None,
        baseline: int | None, fail_on_regression: bool, junit: Path | None,
        max_cost: float | None, max_failures: int) -> None:
    """`evalq run` (main.py says what each option means)."""
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


def demo(*, as_json: bool) -> None:
    """`evalq demo`."""
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
