"""Throughput benchmark: evalq (distributed and embedded) against the direct-call baseline,
all on the same fake model server with a fixed latency, in one run.

    python -m bench.throughput [--n 5000] [--concurrency 64] [--latency-ms 100] [--faults]

Prints items/s, the ratio to the baseline, CPU ms per item (ours vs litellm: evalq's CPU
per item minus the baseline's, which is litellm + HTTP + scoring), peak RSS, enqueue time,
and writes the same as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.fakellm import FakeLLM
from bench.procs import (
    PG_ADMIN,
    REPO,
    RedisServer,
    commit,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    machine,
    peak_rss_mb,
    start_worker,
)
from models.db import dispose_engines
from models.migrate import upgrade
from models.settings import reset_settings
from scheduler import enqueue_offline_run, progress


def write_dataset(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "input": f"item {i}", "expected": f"item {i}"}) + "\n")
    return path


def baseline(fake: FakeLLM, n: int, concurrency: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.baseline", "--n", str(n),
                          "--concurrency", str(concurrency), "--api-base", fake.base_url],
                         cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENAI_API_KEY": "sk-bench"})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _wait_done(experiment_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = progress(experiment_id)
        if state["status"] in ("completed", "failed", "budget_exceeded"):
            return state
        time.sleep(0.05)
    raise TimeoutError(f"experiment {experiment_id} not done after {timeout} s")


def distributed(fake: FakeLLM, dataset: Path, n: int, concurrency: int, workers: int,
                workdir: Path) -> dict[str, Any]:
    redis = RedisServer.start()
    db_url = create_pg_database(PG_ADMIN)
    env = {**os.environ, "EVALQ_BROKER_URL": redis.url, "EVALQ_DATABASE_URL": db_url,
           "OPENAI_API_KEY": "sk-bench", "EVALQ_RETRY_INITIAL_S": "0.1"}
    os.environ.update({k: env[k] for k in ("EVALQ_BROKER_URL", "EVALQ_DATABASE_URL",
                                           "EVALQ_RETRY_INITIAL_S", "OPENAI_API_KEY")})
    reset_settings()
    dispose_engines()
    procs = []
    try:
        upgrade()
        per_worker = max(1, concurrency // workers)
        procs = [start_worker(env, per_worker, f"bench{i}", workdir / f"worker{i}.log")
                 for i in range(workers)]
        warm = write_dataset(workdir / "warm.jsonl", 2 * concurrency)
        _wait_done(enqueue_offline_run(dataset=warm, model="openai/bench",
                                       api_base=fake.base_url), 120)
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        own_cpu0, t0 = time.process_time(), time.perf_counter()
        experiment_id = enqueue_offline_run(dataset=dataset, model="openai/bench",
                                            api_base=fake.base_url)
        enqueue_s = time.perf_counter() - t0
        own_cpu = time.process_time() - own_cpu0
        state = _wait_done(experiment_id, 1800)
        wall = time.perf_counter() - t0
        worker_cpu = sum(cpu_seconds(p.pid) - c for p, c in zip(procs, cpu_before, strict=True))
        return {"items": n, "done": state["done"], "failed": state["failed"],
                "wall_s": wall, "items_per_s": n / wall, "enqueue_s": enqueue_s,
                "producer_cpu_s": own_cpu, "worker_cpu_s": worker_cpu,
                "cpu_ms_per_item": (worker_cpu + own_cpu) / n * 1000,
                "workers": workers, "concurrency_per_worker": per_worker,
                "peak_rss_mb_per_worker": [round(peak_rss_mb(p.pid), 1) for p in procs]}
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        dispose_engines()
        drop_pg_database(PG_ADMIN, db_url)
        redis.stop()


EMBEDDED = """
import json, resource, sys, time
from scheduler import enqueue_offline_run, wait_for_experiment
warm = enqueue_offline_run(dataset=sys.argv[2], model="openai/bench", api_base=sys.argv[3])
wait_for_experiment(warm)
cpu0, t0 = time.process_time(), time.perf_counter()
exp = enqueue_offline_run(dataset=sys.argv[1], model="openai/bench", api_base=sys.argv[3])
state = wait_for_experiment(exp)
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
n = state["counts"]["total"]
print(json.dumps({"items": n, "done": state["counts"]["done"], "wall_s": wall,
                  "items_per_s": n / wall, "cpu_ms_per_item": cpu / n * 1000,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def embedded(fake: FakeLLM, dataset: Path, concurrency: int, workdir: Path) -> dict[str, Any]:
    warm = write_dataset(workdir / "warm-embedded.jsonl", 2 * concurrency)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALQ_")}
    env.update({"EVALQ_DATABASE_URL": f"sqlite:///{workdir / 'embedded.db'}",
                "EVALQ_CONCURRENCY": str(concurrency), "EVALQ_POLL_INTERVAL_S": "0.05",
                "OPENAI_API_KEY": "sk-bench", "EVALQ_RETRY_INITIAL_S": "0.1"})
    out = subprocess.run([sys.executable, "-c", EMBEDDED, str(dataset), str(warm),
                          fake.base_url], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="items (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="total concurrency")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="model latency")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (cores)")
    parser.add_argument("--faults", action="store_true",
                        help="also measure with 20%% 429 and 5%% 500 injected")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    fake = FakeLLM.start(latency_ms=args.latency_ms)
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), **commit(),
                               "machine": machine(),
                               "n": args.n, "concurrency": args.concurrency,
                               "latency_ms": args.latency_ms}
    try:
        with tempfile.TemporaryDirectory(prefix="evalq-bench-") as tmp:
            workdir = Path(tmp)
            dataset = write_dataset(workdir / "bench.jsonl", args.n)
            print(f"baseline: {args.n} items, concurrency {args.concurrency}...", flush=True)
            results["baseline"] = baseline(fake, args.n, args.concurrency)
            print(f"evalq distributed: {args.workers} workers...", flush=True)
            results["evalq"] = distributed(fake, dataset, args.n, args.concurrency,
                                           args.workers, workdir)
            if args.faults:
                print("evalq distributed with faults (20% 429, 5% 500)...", flush=True)
                fake.configure(fault_rates={"429": 0.2, "500": 0.05})
                results["evalq_faults"] = distributed(fake, dataset, args.n, args.concurrency,
                                                      args.workers, workdir)
                fake.configure(fault_rates={})
            if not args.skip_embedded:
                print("evalq embedded...", flush=True)
                results["embedded"] = embedded(fake, dataset, args.concurrency, workdir)
    finally:
        fake.stop()
    report(results)


def report(results: dict[str, Any]) -> None:
    base = results["baseline"]
    rows = [("baseline (1 process, litellm.acompletion)", base)]
    rows += [(name, results[key]) for key, name in (
        ("evalq", "evalq distributed (Redis, PostgreSQL)"),
        ("evalq_faults", "evalq distributed, 20% 429 + 5% 500"),
        ("embedded", "evalq embedded (SQLite)")) if key in results]
    print(f"\n{results['n']} items, concurrency {results['concurrency']}, "
          f"{results['latency_ms']:g} ms model latency, {results['machine']['cpus']} CPUs")
    print(f"{'':44} {'items/s':>9} {'x base':>7} {'CPU ms/item':>12} {'done':>6}")
    for name, r in rows:
        print(f"{name:44} {r['items_per_s']:9.1f} {r['items_per_s'] / base['items_per_s']:7.2f} "
              f"{r['cpu_ms_per_item']:12.2f} {r.get('done', r.get('items')):>6}")
    if "evalq" in results:
        ev = results["evalq"]
        ours = ev["cpu_ms_per_item"] - base["cpu_ms_per_item"]
        results["evalq"]["our_cpu_ms_per_item"] = ours
        print(f"\nevalq CPU per item: {ev['cpu_ms_per_item']:.2f} ms = baseline "
              f"{base['cpu_ms_per_item']:.2f} ms (litellm + HTTP + scoring) + {ours:.2f} ms ours "
              f"(enqueue, Celery dispatch, DB writes)")
        print(f"enqueue of {results['n']} items: {ev['enqueue_s']:.2f} s; worker peak RSS "
              f"{ev['peak_rss_mb_per_worker']} MB; baseline peak RSS {base['peak_rss_mb']:.0f} MB")
    out = REPO / "bench" / "results" / "throughput.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
