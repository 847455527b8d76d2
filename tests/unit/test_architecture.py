"""The house rules of the code, checked on every run: layers, no import circles, no
borrowed private names, imports at the top (a lazy one says why), bench apart from tests,
and rooms a newcomer reads at a glance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "workers", "scheduler", "bench")
LAYERS = {"models": 0, "workers": 1, "scheduler": 2, "bench": 3}  # lower never imports higher


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
            if "migrations" not in p.parts}


MODULES = _sources()


def _imports(path: Path) -> list[tuple[ast.Import | ast.ImportFrom, list[str]]]:
    """Every import of a file with the first-party modules (or names) it names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node, [f"{node.module}.{a.name}" for a in node.names]))
        elif isinstance(node, ast.Import):
            out.append((node, [a.name for a in node.names]))
    return out


def _owner(name: str) -> str | None:
    """The module of ours that `name` (a module, or module.attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = {owner for node, names in _imports(path) for n in names
                if (owner := _owner(n)) is not None and owner != module}
        graph[module] = deps
    return graph


def test_the_tree_is_read_whole() -> None:
    assert {"models.tables", "workers.tasks", "scheduler.cli.main", "workers.scoring"} \
        <= set(MODULES)


def test_a_lower_layer_never_imports_a_higher_one() -> None:
    wrong = [f"{module} imports {dep}" for module, deps in _graph().items() for dep in deps
             if LAYERS[dep.split(".")[0]] > LAYERS[module.split(".")[0]]]
    assert wrong == []


def test_no_import_circles() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(part) > 1:
                circles.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_no_module_imports_another_modules_private_names() -> None:
    borrowed = [f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for path in MODULES.values() for node, names in _imports(path)
                if isinstance(node, ast.ImportFrom)
                for name in names
                if name.rpartition(".")[2].startswith("_")
                and name.split(".")[0] in (*PACKAGES, "tests")]
    assert borrowed == []


def test_imports_sit_at_module_level_unless_a_comment_says_why_not() -> None:
    hidden = []
    for path in MODULES.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, _ in _imports(path):
            if node.col_offset == 0:
                continue
            said = "lazy" in lines[node.lineno - 1] or "lazy" in lines[node.lineno - 2]
            if not said:
                hidden.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert hidden == []


def test_bench_never_imports_tests() -> None:
    used = [f"{path.relative_to(REPO)}:{node.lineno}" for module, path in MODULES.items()
            if module.startswith("bench") for node, names in _imports(path)
            if any(n.split(".")[0] == "tests" for n in names)]
    assert used == []


@pytest.mark.parametrize("folder", ["models", "workers", "scheduler",
                                    *[str(p.relative_to(REPO)) for pkg in ("workers", "scheduler")
                                      for p in (REPO / pkg).iterdir() if p.is_dir()
                                      and (p / "__init__.py").exists()]])
def test_every_room_is_small_and_says_what_lives_there(folder: str) -> None:
    path = REPO / folder
    entries = [p for p in path.iterdir() if p.name not in ("__pycache__", "__init__.py")
               and (p.suffix == ".py" or (p / "__init__.py").exists())]
    assert len(entries) <= 12, f"{folder} has {len(entries)} modules and subpackages"
    doc = ast.get_docstring(ast.parse((path / "__init__.py").read_text(encoding="utf-8")))
    assert doc, f"{folder}/__init__.py has no docstring"
