"""Which test cases a run evaluates: a file path, a shipped dataset NAME (datasets/), or a
dataset NAME stored by an earlier run; and the cases of a stored experiment."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from models.crud import get_experiment, latest_dataset, stored_items
from models.db import session_scope
from models.migrate import prepare_database
from models.settings import get_settings
from models.tables import DatasetItem
from scheduler.errors import DatasetFormatError
from scheduler.experiments.dataset_file import ParsedDataset, load_dataset_file


def shipped_datasets_dir() -> Path:
    """Where `NAME` datasets are looked up: EVALQ_DATASETS_DIR or the repo's datasets/."""
    configured = get_settings().datasets_dir
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "datasets"


def shipped_path(name: str) -> Path | None:
    """NAME.jsonl inside the datasets folder, or None: a name never leaves the folder
    (`../x`, `/etc/x` and links out of it are not names; give a path as a path)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        return None
    folder = shipped_datasets_dir().resolve()
    candidate = (folder / f"{name}.jsonl").resolve()
    return candidate if candidate.parent == folder else None


def shipped_names() -> list[str]:
    """The names of the shipped datasets."""
    return [p.stem for p in shipped_datasets_dir().glob("*.jsonl")]


def resolve_dataset(dataset: str | Path) -> ParsedDataset:
    """The test cases of a file path, a shipped dataset NAME, or a stored dataset NAME."""
    settings = get_settings()
    path = Path(dataset)
    if path.is_file():
        return load_dataset_file(path, max_line_bytes=settings.max_line_bytes)
    shipped = shipped_path(str(dataset))
    if shipped is not None and shipped.is_file():
        return load_dataset_file(shipped, max_line_bytes=settings.max_line_bytes)
    if path.suffix or "/" in str(dataset):
        raise DatasetFormatError(str(dataset), None, "no such file")
    prepare_database()
    with session_scope() as session:
        found = latest_dataset(session=session, name=str(dataset))
        if found is None or found.id is None:
            raise DatasetFormatError(
                str(dataset), None, "no such file, no shipped dataset and no stored dataset "
                f"of that name (shipped: {', '.join(sorted(shipped_names()))})"
            )
        items = [
            {"key": i.key, "position": i.position, "input": i.input, "expected": i.expected,
             "meta": i.meta, "assertions": i.assertions, "tools": i.tools}
            for i in stored_items(session=session, dataset_id=found.id)
        ]
        return ParsedDataset(found.name, found.version, found.source or found.name, items)


def dataset_items(experiment_id: int) -> dict[int, DatasetItem]:
    """The test cases of an experiment's dataset, by item id."""
    with session_scope() as session:
        exp = get_experiment(session=session, experiment_id=experiment_id)
        rows = session.exec(select(DatasetItem).where(DatasetItem.dataset_id == exp.dataset_id))
        return {row.id: row for row in rows if row.id is not None}
