"""Recovery times: how long after a failure an experiment (or an online batch) is
complete again, as measured by the reliability tests, with evalq's default settings.

    python -m bench.recovery [--repeat 1]

Runs tests/reliability/test_worker_kill.py and test_recovery.py (real workers, Redis,
RabbitMQ, PostgreSQL, the fake model server), collects the seconds each test reports
(from the failure, or from the moment a replacement or the broker is back, as the test
says) and writes bench/results/recovery.json. The README's guarantees table quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.procs import REPO, machine

TESTS = ["tests/reliability/test_worker_kill.py", "tests/reliability/test_recovery.py"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs of the tests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "recovery.jsonl"
        for _ in range(args.repeat):
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                cwd=REPO, env={**os.environ, "BENCH_RECOVERY_RESULTS": str(lines)},
                check=False)
            if done.returncode != 0:
                raise SystemExit(f"the reliability tests failed (exit {done.returncode}): "
                                 "no figures written")
        rows = [json.loads(line) for line in lines.read_text().splitlines()]
    by_case: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        by_case.setdefault((row["test"], row["broker"]), []).append(row["seconds"])
    summary = [{"test": test, "broker": broker, "runs": len(secs), "min_s": min(secs),
                "median_s": round(statistics.median(secs), 2), "max_s": max(secs)}
               for (test, broker), secs in sorted(by_case.items())]
    out = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
           "settings": "defaults (EVALQ_HEARTBEAT_S=2, EVALQ_WORKER_DEAD_AFTER_S=15)",
           "cases": summary, "raw": rows}
    path = REPO / "bench" / "results" / "recovery.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for case in summary:
        print(f"{case['test']:<75} {case['broker']:<9} median {case['median_s']:5.1f} s "
              f"(max {case['max_s']:.1f} s, {case['runs']} runs)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
