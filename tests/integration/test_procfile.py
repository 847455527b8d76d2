"""The Procfile as a user runs it: `honcho start` (worker, beat, flower) against Redis and
PostgreSQL, then `evalq run` and an online evaluator from the shell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO, free_port, truncate_all


def _evalq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_honcho_start_runs_worker_beat_and_flower(redis_url: str, pg_url: str,
                                                  tmp_path: Path):
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent))
    assert honcho, "honcho is a dev dependency: pip install -e '.[dev]'"
    env = {**os.environ, "EVALQ_BROKER_URL": redis_url, "EVALQ_DATABASE_URL": pg_url,
           "FLOWER_BASIC_AUTH": "ops:secret-pw", "FLOWER_PORT": str(free_port()),
           "EVALQ_BEAT_SCHEDULE": str(tmp_path / "beat"), "EVALQ_TICK_INTERVAL_S": "1",
           "EVALQ_INGEST_SETTLE_S": "0", "EVALQ_WORKER_THREADS": "4",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    assert _evalq(env, "db", "upgrade").returncode == 0
    truncate_all(pg_url)
    log = (tmp_path / "honcho.log").open("wb")
    procs = subprocess.Popen([honcho, "start"], cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = _evalq(env, "run", "capitals", "--model", "evalq/toy", "--prompt", "{question}",
                     "--json", "--timeout", "120")
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["report"]["mode"] == "distributed"
        assert summary["counts"]["done"] == 10 and 0 < summary["scores"]["exact_match"] < 1

        runs = tmp_path / "runs.jsonl"
        runs.write_text("".join(json.dumps({"id": f"p{i}", "output": "ok" if i % 2 else "no"})
                                + "\n" for i in range(10)))
        added = _evalq(env, "online", "add", "smoke", "--scorer",
                       '{"type": "contains", "value": "ok"}', "--every", "1s")
        assert added.returncode == 0, added.stderr
        assert _evalq(env, "ingest", str(runs)).returncode == 0
        deadline = time.monotonic() + 60
        report: dict = {}
        while time.monotonic() < deadline:
            report = json.loads(_evalq(env, "online", "report", "smoke", "--json").stdout)
            if report["windows"] and report["windows"][-1]["scorers"]["contains"]["n"] == 10:
                break
            time.sleep(1)
        assert report["windows"][-1]["scorers"]["contains"]["mean"] == 0.5, report
    finally:
        os.killpg(procs.pid, signal.SIGTERM)
        procs.wait(60)
        log.close()
    out = (tmp_path / "honcho.log").read_text(errors="replace")
    assert "worker.1" in out and "beat.1" in out and "flower.1" in out
