"""Reports at scale: how long `evalq report`, `evalq compare` and the HTML page take on a
large experiment, and how much memory `evalq run` needs for a large dataset file.

    python -m bench.reports [--items 20000] [--repeats 5] [--run-lines 100000]
                            [--label after] [--skip-run]

Report timings (PostgreSQL): a fresh database holds two experiments of `--items` items
with two scorers each (exact_match, token_f1), written through models.crud as workers
write them (record_outcomes, 1,000 a transaction). Then, `--repeats` times each, median:
`experiment_report`, `compare_experiments` (2,000 bootstrap resamples) and the HTML page
(load_items + build_report + render_experiment_html) in this process, and the commands
`evalq report ID --json`, `evalq compare A B --json` and `evalq report ID --html F` timed
as whole processes (import included; `evalq --help` is timed too, for the start-up part).

Memory: the peak RSS (/usr/bin/time's maximum resident set) of `evalq run FILE --model
evalq/toy` in embedded mode (SQLite) on a file of 10,000 lines and one of `--run-lines`
lines, and of the same process importing litellm and nothing else (the floor: embedded
mode calls the model in-process).

Writes bench/results/reports.json, keeping the other labels' entries (run it once with
`--label before` on the old code, once with `--label after`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import (
    PG_ADMIN,
    REPO,
    commit,
    create_pg_database,
    drop_pg_database,
    machine,
)
from models.crud import (
    create_experiment,
    dataset_item_ids,
    get_or_create_dataset,
    mark_experiment,
    record_outcomes,
)
from models.db import dispose_engines, session_scope
from models.migrate import upgrade
from models.settings import reset_settings
from models.tables import Experiment, ExperimentStatus, ResultCreate, ResultStatus, ScoreBase
from scheduler.reports.compare import compare_experiments
from scheduler.reports.experiment import build_report, experiment_report, load_items
from scheduler.reports.html import render_experiment_html

RESULTS = REPO / "bench" / "results" / "reports.json"
CATEGORIES = ("arithmetic", "geography", "language", "science")


def _items(n: int) -> list[dict[str, Any]]:
    return [{"key": f"case-{i:06d}", "position": i + 1,
             "input": f"Question {i}: what is {i} plus {i}? Answer with the number only.",
             "expected": str(2 * i), "meta": {"category": CATEGORIES[i % 4]},
             "assertions": None, "tools": None} for i in range(n)]


def seed_experiment(dataset_id: int, item_ids: list[int], name: str, quality: float,
                    seed: int) -> int:
    """One completed experiment over the items: ~2% failed calls, two scorers a result."""
    rng = random.Random(seed)
    with session_scope() as session:
        exp = create_experiment(session=session, experiment_in=Experiment(
            name=name, model="evalq/toy", dataset_id=dataset_id, total_items=len(item_ids),
            mode="distributed", scorers=[{"label": "exact_match"}, {"label": "token_f1"}]))
        assert exp.id is not None
        exp_id = exp.id
        mark_experiment(session=session, experiment_id=exp_id,
                        status=ExperimentStatus.RUNNING)
    for start in range(0, len(item_ids), 1000):
        outcomes: list[tuple[ResultCreate, list[ScoreBase]]] = []
        for item_id in item_ids[start:start + 1000]:
            if rng.random() < 0.02:
                outcomes.append((ResultCreate(
                    experiment_id=exp_id, item_id=item_id, status=ResultStatus.ERROR,
                    error="RateLimitError: 429 Too Many Requests", error_type="RateLimitError",
                    attempts=5), []))
                continue
            right = rng.random() < quality
            f1 = 1.0 if right else round(rng.random() * 0.8, 4)
            output = (f"The answer is {item_id * 2}." if right
                      else f"I think it is {rng.randint(0, 10**6)}, but I am not sure.")
            outcomes.append((
                ResultCreate(experiment_id=exp_id, item_id=item_id, status=ResultStatus.OK,
                             output=output, latency_ms=rng.lognormvariate(5.5, 0.4),
                             prompt_tokens=24, completion_tokens=9, cost_usd=0.00002,
                             attempts=1, response_model="toy"),
                [ScoreBase(scorer="exact_match", scorer_version="1", value=float(right),
                           passed=right),
                 ScoreBase(scorer="token_f1", scorer_version="1", value=f1, passed=f1 >= 0.5,
                           explanation=f"token F1 {f1}")]))
        with session_scope() as session:
            record_outcomes(session=session, experiment_id=exp_id, outcomes=outcomes)
    return exp_id


def seed(n: int) -> tuple[int, int]:
    """A dataset of n items and two experiments on it (baseline, candidate)."""
    with session_scope() as session:
        dataset, _ = get_or_create_dataset(session=session, name="bench-reports",
                                           version=f"v{n}", source="bench", items=_items(n))
        assert dataset.id is not None
        dataset_id = dataset.id
    with session_scope() as session:
        item_ids = dataset_item_ids(session=session, dataset_id=dataset_id)
    return (seed_experiment(dataset_id, item_ids, "baseline", 0.70, 1),
            seed_experiment(dataset_id, item_ids, "candidate", 0.72, 2))


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs": repeats}


def cli(env: dict[str, str], *args: str) -> Callable[[], None]:
    def run() -> None:
        subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], cwd=REPO, env=env,
                       check=True, stdout=subprocess.DEVNULL)
    return run


def html_page(exp_id: int, out: Path) -> None:
    exp, dataset, rows = load_items(exp_id)
    out.write_text(render_experiment_html(build_report(exp, dataset, rows), rows))


def report_timings(n: int, repeats: int, workdir: Path) -> dict[str, Any]:
    db_url = create_pg_database(PG_ADMIN)
    os.environ["EVALQ_DATABASE_URL"] = db_url
    os.environ.pop("EVALQ_BROKER_URL", None)
    reset_settings()
    dispose_engines()
    env = {**os.environ}
    try:
        upgrade()
        t0 = time.perf_counter()
        base, cand = seed(n)
        print(f"seeded 2 x {n} items in {time.perf_counter() - t0:.1f} s", flush=True)
        page = workdir / "report.html"
        out: dict[str, Any] = {
            "experiment_report": timed(lambda: experiment_report(cand), repeats),
            "compare_experiments": timed(lambda: compare_experiments(base, cand), repeats),
            "html_page": timed(lambda: html_page(cand, page), repeats),
        }
        out["html_page"]["bytes"] = page.stat().st_size
        html = page.read_text()
        out["html_page"]["item_rows_in_page"] = html.count("<tr data-failed=")
        out["cli_help"] = timed(cli(env, "--help"), repeats)
        out["cli_report_json"] = timed(cli(env, "report", str(cand), "--json"), repeats)
        out["cli_compare_json"] = timed(cli(env, "compare", str(base), str(cand), "--json"),
                                        repeats)
        out["cli_report_html"] = timed(cli(env, "report", str(cand), "--html",
                                           str(workdir / "cli.html")), repeats)
        for key, value in out.items():
            print(f"  {key:22} median {value['median_s']:.3f} s", flush=True)
        return out
    finally:
        dispose_engines()
        drop_pg_database(PG_ADMIN, db_url)


def write_dataset(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"case-{i:06d}", "input": f"What is {i} + {i}?",
                                "expected": str(2 * i),
                                "metadata": {"category": CATEGORIES[i % 4]}}) + "\n")
    return path


def peak_rss_mb(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one command, by /usr/bin/time."""
    out = cwd / "time.txt"
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(out), *cmd], cwd=cwd, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return round(int(out.read_text().split()[-1]) / 1024, 1), round(time.perf_counter() - t0, 1)


def run_memory(lines: list[int], workdir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALQ_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    out: dict[str, Any] = {}
    floor, _ = peak_rss_mb([sys.executable, "-c", "import litellm"], env, workdir)
    out["import_litellm_peak_rss_mb"] = floor
    print(f"  import litellm: peak RSS {floor} MB", flush=True)
    for n in lines:
        data = write_dataset(workdir / f"run-{n}.jsonl", n)
        db = workdir / f"run-{n}.db"
        run_env = {**env, "EVALQ_DATABASE_URL": f"sqlite:///{db}"}
        rss, wall = peak_rss_mb([sys.executable, "-m", "scheduler.cli.main", "run", str(data),
                                 "--model", "evalq/toy", "--json"], run_env, workdir)
        out[f"evalq_run_{n}_lines"] = {"peak_rss_mb": rss, "wall_s": wall,
                                       "file_bytes": data.stat().st_size}
        print(f"  evalq run, {n} lines: peak RSS {rss} MB ({wall} s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run-lines", type=int, default=100000)
    parser.add_argument("--label", default="after", help="the key of this run in the file")
    parser.add_argument("--skip-run", action="store_true",
                        help="skip the evalq run memory (keeps this label's earlier figures)")
    parser.add_argument("--skip-reports", action="store_true",
                        help="skip the report timings (keeps this label's earlier figures)")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    entry: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                             **commit(), "machine": machine(),
                             "parameters": {"items": args.items, "scorers": 2,
                                            "repeats": args.repeats, "n_boot": 2000,
                                            "database": "postgresql",
                                            "run_lines": [10000, args.run_lines],
                                            "run_mode": "embedded (SQLite), evalq/toy"}}
    with tempfile.TemporaryDirectory(prefix="evalq-bench-reports-") as tmp:
        workdir = Path(tmp)
        if not args.skip_reports:
            print(f"reports over {args.items} items, {args.repeats} runs each...", flush=True)
            entry["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
            entry["reports"] = report_timings(args.items, args.repeats, workdir)
            entry["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        if not args.skip_run:
            print("evalq run memory...", flush=True)
            entry["run_memory"] = run_memory([10000, args.run_lines], workdir)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for part in ("reports", "load_average_before", "load_average_after", "run_memory"):
        if part not in entry and part in results.get(args.label, {}):
            entry[part] = results[args.label][part]  # a part skipped this time
    results[args.label] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)} [{args.label}]")


if __name__ == "__main__":
    main()
