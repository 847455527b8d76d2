"""Factories for rows and files used across tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.crud import create_experiment, dataset_item_ids, get_or_create_dataset
from models.db import session_scope
from models.tables import Experiment, ExperimentStatus, ResultCreate, ScoreBase


def make_items(n: int, *, prefix: str = "q") -> list[dict[str, Any]]:
    """n DatasetItem field dicts: input "prefix-i", expected "answer-i"."""
    return [
        {"key": f"{prefix}-{i}", "position": i + 1, "input": f"{prefix}-{i}",
         "expected": f"answer-{i}", "meta": {"category": "even" if i % 2 == 0 else "odd"},
         "assertions": None}
        for i in range(n)
    ]


def make_experiment(n_items: int = 5, *, repeats: int = 1, name: str = "exp",
                    scorers: list[dict[str, Any]] | None = None) -> tuple[int, list[int]]:
    """A stored dataset of n items and a RUNNING experiment over it: (experiment id, item ids)."""
    items = make_items(n_items, prefix=name)
    with session_scope() as session:
        dataset, _ = get_or_create_dataset(session=session, name=name, version=name + "-v1",
                                           source=None, items=items)
        assert dataset.id is not None
        ids = dataset_item_ids(session=session, dataset_id=dataset.id)
        exp = create_experiment(session=session, experiment_in=Experiment(
            name=name, model="evalq/toy", dataset_id=dataset.id, repeats=repeats,
            total_items=len(ids) * repeats, status=ExperimentStatus.RUNNING,
            scorers=scorers or [{"label": "exact_match", "type": "exact_match",
                                 "version": "1", "params": {}}],
        ))
        assert exp.id is not None
        return exp.id, ids


def result_in(experiment_id: int, item_id: int, repeat: int = 0, *, ok: bool = True,
              cost: float = 0.001, **overrides: Any) -> ResultCreate:
    """A Result as a worker writes it (fields in `overrides` replace the defaults)."""
    return ResultCreate(**{
        "experiment_id": experiment_id, "item_id": item_id, "repeat": repeat,
        "status": "ok" if ok else "error", "output": "out" if ok else None,
        "tool_calls": None, "error": None if ok else "boom", "error_type": None if ok else "X",
        "latency_ms": 12.5, "prompt_tokens": 10, "completion_tokens": 3, "cost_usd": cost,
        "cost_known": True, "attempts": 1, "response_model": "m", **overrides,
    })


def score_in(label: str = "exact_match", value: float | None = 1.0, **overrides: Any
             ) -> ScoreBase:
    """A scorer's verdict (a Score without its subject) as a worker writes it."""
    return ScoreBase(**{
        "scorer": label, "scorer_version": "1", "value": value,
        "passed": value is not None and value >= 1.0, "explanation": "e", "error": None,
        "meta": None, "judge_model": None, "judge_cost_usd": 0.0, "judge_tokens": 0,
        "judge_latency_ms": None, **overrides})


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts, or raw strings for broken lines) as a JSONL file."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def counts(total: int, *, done: int, failed: int = 0, skipped_budget: int = 0,
           pending: int = 0) -> dict[str, int]:
    """A report's "counts" object."""
    return {"total": total, "done": done, "failed": failed, "skipped_budget": skipped_budget,
            "pending": pending}
