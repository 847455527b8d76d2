"""Embedded mode (issue 14 target 4, issue 16 target 5): the model name is still checked
before anything is written, and the report says the run's concurrency (EVALQ_CONCURRENCY).
Apart from test_quiet_warm_workers.py, whose module-wide distributed fixture sets a broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from scheduler.cli.main import app
from scheduler.experiments.embedded import running_here
from tests.factories import write_jsonl
from tests.support import EnvPatch

runner = CliRunner()


def _dataset(tmp_path: Path, n: int) -> Path:
    tag = uuid.uuid4().hex[:6]
    rows = [{"id": f"{tag}-{i}", "input": f"{tag} item {i}.", "expected": "x"}
            for i in range(n)]
    return write_jsonl(tmp_path / f"ec-{tag}.jsonl", rows)


def test_embedded_run_checks_the_model_before_writing(embedded_env, tmp_path: Path):
    dataset = _dataset(tmp_path, 5)
    result = runner.invoke(app, ["run", str(dataset), "--model", "nosuchprovider/x"])
    assert result.exit_code == 2 and "unknown model 'nosuchprovider/x'" in result.stderr
    with session_scope() as s:
        assert s.execute(sa.text("SELECT count(*) FROM experiment")).scalar_one() == 0


def test_embedded_report_concurrency_is_evalq_concurrency(embedded_env, fake_llm: FakeLLM,
                                                          tmp_path: Path):
    with EnvPatch(EVALQ_CONCURRENCY="7"):
        result = runner.invoke(app, ["run", str(_dataset(tmp_path, 4)), "--model",
                                     "openai/fake", "--api-base", fake_llm.base_url, "--json"])
        summary = json.loads(result.stdout)
        local = running_here(summary["experiment_id"])
        if local is not None:
            local.result(timeout=60)
    assert result.exit_code == 0, result.stderr
    assert summary["report"]["concurrency"] == 7
    shown = runner.invoke(app, ["report", str(summary["experiment_id"])])
    assert "mode=embedded  concurrency=7" in shown.stdout
