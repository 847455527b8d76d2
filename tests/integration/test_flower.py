"""Flower sees every task: a real Flower process with basic auth, a real worker with
events on, a small experiment whose tasks show up by name as SUCCESS."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import enqueue_offline_run, wait_for_experiment
from tests.factories import write_jsonl
from tests.fakellm import FakeLLM
from tests.support import REPO, WorkerProcess, free_port

USER, PASSWORD = "evalq", "flower-test-pw"


def _get(url: str, auth: bool = True) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def flower(distributed: WorkerProcess, redis_url: str) -> Iterator[str]:
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"evalq-flower-{os.getpid()}.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}",
             "--address=127.0.0.1", f"--basic-auth={USER}:{PASSWORD}"],
            cwd=REPO, env={**os.environ, "EVALQ_BROKER_URL": redis_url},
            stdout=handle, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get(f"{url}/api/workers")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"flower exited: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    else:
        pytest.fail(f"flower did not answer in 60 s: {log.read_text()[-2000:]}")
    time.sleep(1.0)  # let Flower's event receiver attach before tasks run
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_flower_requires_credentials(flower: str):
    assert _get(f"{flower}/api/tasks", auth=False)[0] == 401
    assert _get(f"{flower}/api/tasks")[0] == 200


def test_flower_lists_experiment_tasks_as_success(flower: str, fake_llm: FakeLLM,
                                                  tmp_path: Path):
    rows = [{"id": f"f{i}", "input": f"flower {i}", "expected": f"flower {i}"}
            for i in range(5)]
    exp_id = enqueue_offline_run(dataset=write_jsonl(tmp_path / "f.jsonl", rows),
                                 model="openai/fake", api_base=fake_llm.base_url)
    wait_for_experiment(exp_id, timeout=60)
    ours: list[dict] = []
    pairs: set[tuple[int, int]] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = _get(f"{flower}/api/tasks?taskname=evalq.run_items&limit=1000")
        assert status == 200
        tasks = json.loads(body).values()
        ours = [t for t in tasks if str(t.get("args", "")).startswith(f"({exp_id},")]
        pairs = {(int(i), int(r)) for t in ours
                 for i, r in re.findall(r"\[(\d+), (\d+)\]", str(t["args"]))}
        if len(pairs) == 5 and all(t["state"] == "SUCCESS" for t in ours):
            break
        time.sleep(0.5)
    assert len(pairs) == 5, ours  # every (item, repeat) of the experiment, in chunk tasks
    assert {t["state"] for t in ours} == {"SUCCESS"}
    assert {t["name"] for t in ours} == {"evalq.run_items"}
    # Task arguments carry ids only: no prompts, no keys.
    assert all("sk-" not in str(t.get("args")) + str(t.get("kwargs")) for t in ours)


def test_secrets_never_leave_the_environment(flower: str, distributed: WorkerProcess,
                                             fake_llm: FakeLLM, redis_url: str, pg_url: str,
                                             tmp_path: Path):
    """The provider key (set for every process by conftest) must not appear in task
    arguments, Flower, the broker, the database, logs or reports — even when the provider
    echoes it back in an error message."""
    import redis
    import sqlalchemy as sa

    from scheduler.report import experiment_report, load_items

    secret = os.environ["OPENAI_API_KEY"]
    assert secret.startswith("sk-evalq-test")
    rows = [{"id": f"s{i}", "input": f"secret test {i}", "expected": f"secret test {i}"}
            for i in range(4)]
    fake_llm.script([{"match": "secret test 3", "status": 401,
                      "message": f"Incorrect API key provided: {secret}"}])
    exp_id = enqueue_offline_run(dataset=write_jsonl(tmp_path / "s.jsonl", rows),
                                 model="openai/fake", api_base=fake_llm.base_url)
    report = wait_for_experiment(exp_id, timeout=60)
    assert report["counts"]["failed"] == 1  # the 401 was recorded as an error
    places: dict[str, str] = {}
    status, body = _get(f"{flower}/api/tasks?limit=1000")
    assert status == 200
    places["flower /api/tasks"] = body.decode()
    places["worker log"] = distributed.output()
    places["report"] = json.dumps(experiment_report(exp_id))
    from scheduler.html_report import render_experiment_html
    from scheduler.junit import write_junit

    data, (_, _, item_rows) = experiment_report(exp_id), load_items(exp_id)
    places["html report"] = render_experiment_html(data, item_rows)
    write_junit(data, item_rows, tmp_path / "junit.xml")
    places["junit"] = (tmp_path / "junit.xml").read_text()
    broker = redis.Redis.from_url(redis_url)
    places["broker"] = " ".join(str(broker.dump(k)) for k in broker.scan_iter())
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        tables = [r[0] for r in conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        places["database"] = " ".join(
            " ".join(conn.exec_driver_sql(f'SELECT row_to_json(t)::text FROM "{t}" t')
                     .scalars().all())
            for t in tables)
    engine.dispose()
    assert "Incorrect API key provided: ***" in places["database"]  # kept, key masked
    leaked = [where for where, text in places.items() if secret in text]
    assert leaked == [], f"the provider key leaked into: {leaked}"
