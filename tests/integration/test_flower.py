"""Flower sees every task: a real Flower process with basic auth, a real worker with
events on, a small experiment whose tasks show up by name as SUCCESS."""

from __future__ import annotations

import base64
import json
import os
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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = _get(f"{flower}/api/tasks?taskname=evalq.run_item&limit=1000")
        assert status == 200
        tasks = json.loads(body).values()
        ours = [t for t in tasks if str(t.get("args", "")).startswith(f"({exp_id},")]
        if len(ours) == 5 and all(t["state"] == "SUCCESS" for t in ours):
            break
        time.sleep(0.5)
    assert len(ours) == 5, ours
    assert {t["state"] for t in ours} == {"SUCCESS"}
    assert {t["name"] for t in ours} == {"evalq.run_item"}
    # Task arguments carry ids only: no prompts, no keys.
    assert all("sk-" not in str(t.get("args")) + str(t.get("kwargs")) for t in ours)
