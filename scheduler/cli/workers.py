"""What `evalq workers` and `evalq status` do (main.py declares their arguments and imports
this module when one of them runs): who does the work, and how far an experiment is."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler.cli import render
from scheduler.cli.common import emit_json
from scheduler.experiments.wait import DONE_STATUSES, progress
from scheduler.liveness import experiment_liveness, worker_command, workers_overview


def ago(seconds: float) -> str:
    """"2 s ago", "5 min ago", "3 h ago"."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def _tasks(n: int) -> str:
    return f"{n} task{'s' if n != 1 else ''}"


def _holding(worker: dict[str, Any]) -> str:
    """"holding 3 tasks of experiment 12", "holding 4 tasks: 3 of experiment 12, 1 of
    experiment 14", "holding nothing"."""
    held, exps = worker["held"], worker["experiments"]
    if not held:
        return "holding nothing"
    if len(exps) == 1 and exps[0]["tasks"] == held:
        return f"holding {_tasks(held)} of experiment {exps[0]['experiment_id']}"
    parts = ", ".join(f"{e['tasks']} of experiment {e['experiment_id']}" for e in exps)
    return f"holding {_tasks(held)}" + (f": {parts}" if parts else "")


def _say(text: str) -> None:
    render.out.print(text, highlight=False, markup=False, soft_wrap=True)


def workers(*, as_json: bool) -> None:
    """Live workers (a heartbeat in the last EVALQ_WORKER_DEAD_AFTER_S seconds): host,
    pid, queues, concurrency, last heartbeat, tasks held and their experiments; and the
    workers that stopped or died in the last hour."""
    data = workers_overview().as_dict()
    if as_json:
        emit_json(data)
        return
    if data["mode"] == "embedded":
        _say(data["message"])
        return
    now = datetime.fromisoformat(data["checked_at"])
    live, dead_after = data["live"], data["dead_after_s"]
    if not live:
        _say(f"no live worker (none has sent a heartbeat in the last {dead_after:g} s): "
             f"start one with `{worker_command()}`")
    else:
        _say(f"{len(live)} live worker{'s' if len(live) != 1 else ''} (a heartbeat in the "
             f"last {dead_after:g} s):")
    for w in live:
        started = (now - datetime.fromisoformat(w["started_at"])).total_seconds()
        _say(f"  {w['name']}  host {w['hostname']}  pid {w['pid']}  queues "
             f"{','.join(w['queues']) or '-'}  concurrency {w['concurrency']}")
        _say(f"      started {ago(started)}, last seen {ago(w['seen_s_ago'])}, {_holding(w)}")
    if data["gone"]:
        _say("gone in the last hour:")
    for w in data["gone"]:
        what = "stopped" if w["state"] == "stopped" else "dead (no heartbeat), last seen"
        held = (f", {_holding(w)} until a live worker sends "
                f"{'it' if w['held'] == 1 else 'them'} again" if w["held"] else "")
        _say(f"  {w['name']}  host {w['hostname']}  pid {w['pid']}: {what} "
             f"{ago(w['seen_s_ago'])}{held}")


def print_liveness(extra: dict[str, Any]) -> None:
    """The lines `evalq status` adds in distributed mode (`experiment_liveness`)."""
    if extra["mode"] != "distributed":
        return
    depths = ", ".join(f"{q} {'unknown' if n is None else n}"
                       for q, n in extra["queues"].items())
    unknown = any(n is None for n in extra["queues"].values())
    render.out.print(f"waiting in the broker: {depths}"
                     + (" (the broker did not answer)" if unknown else ""),
                     highlight=False, markup=False, soft_wrap=True)
    leases = extra["leases"]
    render.out.print(f"tasks of this experiment: {leases['queued']} queued, "
                     f"{leases['running']} running", highlight=False)
    w = extra["workers"]
    holding = ", ".join(f"{h['name']} ({h['tasks']})" for h in w["holding"]) or "none"
    render.out.print(f"live workers: {w['live']} ({len(w['consuming'])} consuming "
                     f"{w['queue']}); holding this experiment's work: {holding}",
                     highlight=False, markup=False, soft_wrap=True)
    if extra["warning"]:
        render.out.print(f"warning: {extra['warning']}", highlight=False, markup=False,
                         soft_wrap=True)



def status(experiment_id: int, *, as_json: bool) -> None:
    """`evalq status`: the experiment's progress, and in distributed mode its liveness."""
    state = progress(experiment_id)
    extra = experiment_liveness(experiment_id, pending=0 if state["status"] in DONE_STATUSES
                                else state["pending"])
    if as_json:
        emit_json({**state, **extra})
        return
    render.print_status(state)
    print_liveness(extra)
