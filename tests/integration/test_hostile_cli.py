"""Hostile data at the terminal and in dataset names: text from a dataset, a model or a
user is printed as itself (never as Rich markup), and a dataset NAME never leaves the
datasets folder."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from scheduler.cli.main import app
from tests.factories import write_jsonl
from tests.support import EnvPatch

runner = CliRunner()
MARKUP = "[/bold]"


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_markup_in_data_and_names_prints_as_itself(embedded_env, tmp_path: Path):
    dataset = write_jsonl(tmp_path / "m.jsonl", [
        {"input": "a", "expected": "A", "metadata": {"tier": MARKUP}},
        {"input": "b", "expected": "B", "metadata": {"tier": "[red]x"}},
        {"input": "c", "expected": "C", "metadata": {"tier": "plain"}},
    ])
    code, out, err = _run("run", str(dataset), "--model", "evalq/toy", "--name", "x [/]",
                          "--scorer", "exact_match")
    assert code in (0, 1), err  # the toy model's answers may fail items; never a crash
    assert "MarkupError" not in out + err and "Traceback" not in out + err
    assert "x [/]" in out
    code, out, err = _run("report", "1", "--by", "tier")
    assert code == 0, err
    assert MARKUP in out and "[red]x" in out and "plain" in out
    code, out, err = _run("list")
    assert code == 0, err
    assert "x [/]" in out


def test_a_dataset_name_never_leaves_the_datasets_folder(embedded_env, tmp_path: Path):
    folder = tmp_path / "datasets"
    folder.mkdir()
    write_jsonl(folder / "inside.jsonl", [{"input": "a", "expected": "A"}])
    write_jsonl(tmp_path / "outside.jsonl", [{"input": "secret", "expected": "x"}])
    (folder / "linked.jsonl").symlink_to(tmp_path / "outside.jsonl")
    with EnvPatch(EVALQ_DATASETS_DIR=str(folder)):
        code, _, err = _run("run", "inside", "--model", "evalq/toy", "--no-wait")
        assert code == 0, err
        for name in ("../outside", "linked", str(tmp_path / "outside")):
            code, _, err = _run("run", name, "--model", "evalq/toy", "--no-wait")
            assert code == 2, (name, err)
            assert "no such file" in err or "no shipped dataset" in err, err
        # A path given as a path is the user's choice.
        code, _, err = _run("run", str(tmp_path / "outside.jsonl"), "--model", "evalq/toy",
                            "--no-wait")
        assert code == 0, err


def test_a_database_failure_prints_no_sql_and_no_traceback(tmp_path: Path):
    """A database that is not there: one line saying so and what to check, exit 1; never
    a traceback, an SQL statement or its parameters."""
    with EnvPatch(EVALQ_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/"
                                     "evalq_no_such_database"):
        for args in (["list"], ["status", "1"], ["report", "1"]):
            code, out, err = _run(*args)
            assert code == 1, (args, out, err)
            assert "the database failed" in err and "EVALQ_DATABASE_URL" in err, err
            assert "Traceback" not in out + err and "SELECT" not in out + err
