"""Bad input: every case answered with a clear message (file, line, field), exit code 2,
and nothing half-written. (The ingestion endpoint's bad bodies are in
tests/integration/test_server.py; the parsers are fuzzed in tests/unit.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from models.db import session_scope
from models.tables import Dataset, DatasetItem, Experiment, Result
from scheduler.cli.main import app

runner = CliRunner()
GOOD = '{"id": "a", "input": {"question": "q"}, "expected": "x"}\n'


def _counts() -> tuple[int, ...]:
    with session_scope() as s:
        return tuple(s.exec(select(func.count()).select_from(t)).one()
                     for t in (Dataset, DatasetItem, Experiment, Result))


def _case(tmp_path: Path, name: str) -> tuple[Path, list[str], str]:
    path = tmp_path / "cases.jsonl"
    extra: list[str] = []
    if name == "truncated JSONL":
        path.write_text(GOOD + '{"id": "b", "input": "tru')
        return path, extra, f"{path}:2: invalid JSON"
    if name == "non-UTF-8 bytes":
        path.write_bytes(GOOD.encode() + b'{"id": "b", "input": "caf\xe9"}\n')
        return path, extra, f"{path}:2: not valid UTF-8"
    if name == "50 MB line":
        with path.open("wb") as f:
            f.write(GOOD.encode() + b'{"input": "' + b"x" * (50 * 1024 * 1024) + b'"}\n')
        return path, extra, f"{path}:2: line longer than"
    path.write_text(GOOD)
    extra, message = {
        "unknown scorer": (["--scorer", "exactmatch"], "unknown scorer 'exactmatch'"),
        "unknown model": (["--model", "nosuch/model-x"], "unknown model 'nosuch/model-x'"),
        "missing template variable": (["--prompt", "Q: {query}"], f"{path}:1: the prompt "
                                       "template uses {query}"),
        "invalid regex": (["--scorer", '{"type": "regex", "pattern": "(["}'],
                          "invalid regular expression"),
        "invalid JSON schema": (["--scorer", '{"type": "json_schema", "schema": '
                                 '{"type": "no-such-type"}}'], "json_schema"),
        "huge repeats": (["--repeats", "1000000"], "repeats must be between 1 and"),
    }[name]
    return path, extra, message


@pytest.mark.parametrize("name", [
    "truncated JSONL", "non-UTF-8 bytes", "50 MB line", "unknown scorer", "unknown model",
    "missing template variable", "invalid regex", "invalid JSON schema", "huge repeats",
])
def test_bad_input_is_refused_cleanly(embedded_env, tmp_path: Path, name: str):
    path, extra, message = _case(tmp_path, name)
    before = _counts()
    result = runner.invoke(app, ["run", str(path), "--model", "evalq/toy", *extra])
    assert result.exit_code == 2, result.stdout + result.stderr
    err = " ".join(result.stderr.split())
    assert message in err, err
    assert "Traceback" not in result.stderr + result.stdout
    assert _counts() == before, "nothing may be written for bad input"


def test_bad_assertion_in_a_dataset_names_the_line(embedded_env, tmp_path: Path):
    path = tmp_path / "a.jsonl"
    path.write_text(GOOD + json.dumps({"id": "b", "input": "q", "expected": "x",
                                       "assertions": [{"type": "regex", "pattern": "("}]}))
    result = runner.invoke(app, ["run", str(path), "--model", "evalq/toy"])
    assert result.exit_code == 2
    assert f"{path}:2:" in " ".join(result.stderr.split())
