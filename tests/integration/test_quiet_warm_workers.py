"""Issue 14 (targets 4, 5) and issue 16 (targets 4, 5) against a real worker: a
distributed `evalq run` never imports litellm (an unknown model is found by the first
worker, which fails the experiment fast and names it), workers log nothing per model call,
are warm (litellm imported, clients and pool created) when they say "ready.", and a
report says which concurrency its run used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from scheduler.cli.main import app
from tests.factories import write_jsonl
from tests.support import REPO, EnvPatch, WorkerProcess

runner = CliRunner()


def _dataset(tmp_path: Path, n: int) -> Path:
    tag = uuid.uuid4().hex[:6]
    rows = [{"id": f"{tag}-{i}", "input": f"{tag} item {i}.", "expected": "x"}
            for i in range(n)]
    return write_jsonl(tmp_path / f"qw-{tag}.jsonl", rows)


# Runs `evalq run ... --no-wait` as `python -X importtime -m scheduler.cli` would, then
# says whether litellm was ever imported.
_PROBE = """
import runpy, sys
sys.argv = ["evalq", *sys.argv[1:]]
try:
    runpy.run_module("scheduler.cli", run_name="__main__")
except SystemExit as exc:
    print("EXIT", exc.code)
print("LITELLM_IMPORTED", "litellm" in sys.modules)
"""


def test_distributed_run_no_wait_never_imports_litellm(distributed: WorkerProcess,
                                                       fake_llm: FakeLLM, tmp_path: Path):
    dataset = _dataset(tmp_path, 50)
    env = dict(os.environ)  # the distributed fixture set EVALQ_BROKER_URL and the database
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE, "run", str(dataset), "--model",
         "openai/fake", "--api-base", fake_llm.base_url, "--no-wait"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert "EXIT 0" in done.stdout or "EXIT None" in done.stdout, done.stderr[-2000:]
    assert "enqueued" in done.stdout
    assert "LITELLM_IMPORTED False" in done.stdout
    imported = [line for line in done.stderr.splitlines()
                if line.startswith("import time:") and line.rstrip().endswith(" litellm")]
    assert imported == [], imported


def test_unknown_model_is_found_by_the_first_worker(distributed: WorkerProcess,
                                                    tmp_path: Path):
    n = 400
    dataset = _dataset(tmp_path, n)
    with EnvPatch(EVALQ_CHUNK_SIZE="4"):
        result = runner.invoke(app, ["run", str(dataset), "--model", "nosuchprovider/x",
                                     "--json"])
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed" and summary["report"]["mode"] == "distributed"
    assert "nosuchprovider/x" in result.stderr  # litellm's reason names the model
    assert "BadRequestError" in summary["report"]["error"]
    with session_scope() as s:
        stored = s.execute(sa.text("SELECT count(*) FROM result WHERE experiment_id = :e"),
                           {"e": summary["experiment_id"]}).scalar_one()
    assert 10 <= stored <= n // 4, stored  # stopped fast, not run to the end


def test_worker_is_warm_and_quiet(distributed: WorkerProcess, fake_llm: FakeLLM,
                                  tmp_path: Path):
    log = distributed.output()
    warm = log.find("warm: litellm")
    assert warm != -1, log[-3000:]
    assert warm < log.find(" ready."), "the worker warmed up after it said it was ready"
    n = 96
    before = len(distributed.output().splitlines())
    result = runner.invoke(app, ["run", str(_dataset(tmp_path, n)), "--model", "openai/fake",
                                 "--api-base", fake_llm.base_url, "--json"])
    assert result.exit_code == 0, result.stderr
    assert fake_llm.stats()["total"] == n
    distributed.wait_for("] succeeded in", 10)
    lines = distributed.output().splitlines()[before:]
    noisy = [line for line in lines if "LiteLLM" in line or "fake" in line]
    assert noisy == [], noisy[:5]
    # Celery logs each task (a chunk of 16 items) received and succeeded; nothing else
    # comes per model call (the earlier test's stopped chunks may still be draining).
    other = [line for line in lines if "Task evalq." not in line and line.strip()]
    assert len(other) < 5, other[:20]


def test_report_says_which_concurrency_a_run_used(distributed: WorkerProcess,
                                                  fake_llm: FakeLLM, tmp_path: Path):
    result = runner.invoke(app, ["run", str(_dataset(tmp_path, 8)), "--model", "openai/fake",
                                 "--api-base", fake_llm.base_url, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["report"]["concurrency"] == 8  # the one live worker: --concurrency 8
    shown = runner.invoke(app, ["report", str(summary["experiment_id"])])
    assert "mode=distributed  concurrency=8" in shown.stdout
