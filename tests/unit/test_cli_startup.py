"""The CLI starts at once: `evalq --help` and `evalq CMD --help` import typer and the
command declarations only, never the database layer, Celery, litellm or the workers; the
package face `scheduler` hands on its API lazily. (Timings: bench/cli_startup.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"sqlalchemy", "sqlmodel", "litellm", "celery", "kombu", "alembic", "workers",
         "models", "httpx", "jsonschema", "numpy"}

_PROBE = """
import json, sys
sys.argv = ["evalq", *sys.argv[1:]]
import scheduler.cli.main as m
code = None
try:
    m.main()
except SystemExit as exc:
    code = exc.code
loaded = sorted({x.split(".")[0] for x in sys.modules} & set(HEAVY))
print(json.dumps({"code": code, "heavy": loaded,
                  "tasks": "workers.tasks" in sys.modules}))
"""


def _probe(*args: str) -> dict[str, object]:
    code = _PROBE.replace("set(HEAVY)", f"set({sorted(HEAVY)!r})")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["run", "--help"],
                                  ["report", "--help"], ["online", "report", "--help"],
                                  ["db", "--help"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    result = _probe(*args)
    assert result["code"] in (0, None)
    assert result["heavy"] == [] and result["tasks"] is False, result


def test_a_usage_error_imports_no_heavy_module() -> None:
    result = _probe("status")  # the experiment id is missing
    assert result["code"] == 2 and result["heavy"] == [], result


def test_importing_a_scheduler_module_does_not_load_the_enqueue_path() -> None:
    code = ("import sys, scheduler.errors, scheduler.cli.common; "
            "print(sorted({x.split('.')[0] for x in sys.modules} & "
            f"set({sorted(HEAVY)!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_package_face_hands_on_every_name() -> None:
    import scheduler

    for name in scheduler.__all__:
        assert getattr(scheduler, name) is not None, name
    assert set(scheduler.__all__) <= set(dir(scheduler))
    from scheduler import enqueue_offline_run, wait_for_experiment

    assert callable(enqueue_offline_run) and callable(wait_for_experiment)
    with pytest.raises(AttributeError):
        scheduler.no_such_name  # noqa: B018
