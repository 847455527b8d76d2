"""CLI start-up: each `evalq` command timed as a whole process, this work tree against a
baseline commit (default HEAD), on a SQLite database holding one demo experiment.

    python -m bench.cli_startup [--runs 9] [--ref HEAD]

The baseline tree is exported with `git archive` into a temporary directory (the work tree
is not touched); both trees run as `python -c "from scheduler.cli.main import main; main()"`
from their own directory, so each imports its own code. Per command: the median (and min)
wall time and CPU time (user + system) of `runs` processes, and for this tree the import
time of each top-level package (`-X importtime`, one more run), the breakdown of what is
left. Writes bench/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from bench.procs import REPO, commit, machine

COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "status --help": ["status", "--help"],
    "run --help": ["run", "--help"],
    "status ID": ["status", "{id}"],
    "list": ["list"],
    "report ID": ["report", "{id}"],
    "scorers": ["scorers"],
}
_ENTRY = "import sys; sys.argv[0] = 'evalq'; from scheduler.cli.main import main; main()"


def _export(ref: str, into: Path) -> str:
    """The tree of `ref` in `into`; returns its commit id."""
    sha = subprocess.run(["git", "rev-parse", ref], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=REPO,
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return sha


def _env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EVALQ_") and k != "PYTHONPATH"}
    env.update(EVALQ_DATABASE_URL=f"sqlite:///{db}", LITELLM_LOCAL_MODEL_COST_MAP="True")
    return env


def _once(tree: Path, args: list[str], env: dict[str, str],
          extra: tuple[str, ...] = ()) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system), exit code and stderr of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *extra, "-c", _ENTRY, *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode, err


def _prepare(tree: Path, db: Path) -> int:
    """A database with one finished demo experiment (made by `tree`'s own code)."""
    env = _env(db)
    subprocess.run([sys.executable, "-c", _ENTRY, "db", "upgrade"], cwd=tree, env=env,
                   check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-c", _ENTRY, "demo", "--json"], cwd=tree,
                          env=env, check=True, capture_output=True, text=True)
    return int(json.loads(done.stdout)["experiment_id"])


def _breakdown(stderr: str, top: int = 8) -> dict[str, float]:
    """Milliseconds of import per top-level package (first-level entries of -X importtime)."""
    cost: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith("  "):  # nested: counted in its top-level importer
            continue
        try:
            us = int(cumulative.strip())
        except ValueError:
            continue
        package = name.strip().split(".")[0]
        cost[package] = cost.get(package, 0.0) + us / 1000
    ranked = sorted(cost.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(v, 1) for k, v in ranked}


def measure(tree: Path, runs: int, *, breakdown: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        experiment_id = _prepare(tree, db)
        env = _env(db)
        out: dict[str, Any] = {}
        for label, template in COMMANDS.items():
            args = [a.format(id=experiment_id) for a in template]
            _once(tree, args, env)  # warm the page cache and .pyc files
            walls, cpus, codes = [], [], set()
            for _ in range(runs):
                wall, cpu, code, _err = _once(tree, args, env)
                walls.append(wall)
                cpus.append(cpu)
                codes.add(code)
            row: dict[str, Any] = {
                "args": args, "exit_codes": sorted(codes),
                "wall_s_median": round(statistics.median(walls), 3),
                "wall_s_min": round(min(walls), 3),
                "cpu_s_median": round(statistics.median(cpus), 3),
            }
            if breakdown:
                *_, err = _once(tree, args, env, ("-X", "importtime"))
                row["import_ms_by_package"] = _breakdown(err)
            out[label] = row
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--ref", default="HEAD", help="baseline commit (default HEAD)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/cli_startup.json")
    ns = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "tree"
        base.mkdir()
        base_sha = _export(ns.ref, base)
        baseline = measure(base, ns.runs, breakdown=False)
    current = measure(REPO, ns.runs, breakdown=True)
    python_alone = []
    for _ in range(ns.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_alone.append(time.perf_counter() - start)
    result = {
        "benchmark": "cli_startup",
        "commit": commit(),
        "machine": machine(),
        "parameters": {"runs": ns.runs, "baseline_ref": ns.ref, "baseline_commit": base_sha,
                       "database": "SQLite, one finished `evalq demo` experiment",
                       "entry": _ENTRY, "target_s": 0.3},
        "load_average_1m": {"before": round(load_before[0], 2),
                            "after": round(os.getloadavg()[0], 2)},
        "python_alone_wall_s_median": round(statistics.median(python_alone), 3),
        "baseline": baseline,
        "current": current,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    width = max(len(k) for k in COMMANDS)
    print(f"{'command':<{width}}  baseline wall/cpu   current wall/cpu")
    for label in COMMANDS:
        b, c = baseline[label], current[label]
        print(f"{label:<{width}}  {b['wall_s_median']:6.3f} / {b['cpu_s_median']:5.3f}   "
              f"{c['wall_s_median']:6.3f} / {c['cpu_s_median']:5.3f}")
    print(f"written to {ns.out}")


if __name__ == "__main__":
    main()
