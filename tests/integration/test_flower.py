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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.compression import decompress

from bench.fakellm import FakeLLM
from scheduler import enqueue_offline_run, wait_for_experiment
from tests.factories import write_jsonl
from tests.support import REPO, WorkerProcess, free_port, http_get

USER, PASSWORD = "evalq", "flower-test-pw"


def _get(url: str, auth: bool = True) -> tuple[int, bytes]:
    return http_get(url, (USER, PASSWORD) if auth else None)


def _decoded(raw: bytes) -> list[str]:
    """A Redis value as text and, for every kombu message in it (a JSON envelope with a
    `body`, alone in a queue's list or as [envelope, exchange, routing key] in the unacked
    hash), the message body decoded: kombu stores bodies base64-encoded, so a secret in a
    task's arguments is not in the raw value."""
    texts = [raw.decode("utf-8", errors="replace")]
    try:
        stack: list[Any] = [json.loads(texts[0])]
    except ValueError:
        return texts
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
            body = item.get("body")
            if not isinstance(body, str):
                continue
            data = body.encode()
            if (item.get("properties") or {}).get("body_encoding") == "base64":
                data = base64.b64decode(data)
            compression = (item.get("headers") or {}).get("compression")
            if compression:
                data = decompress(data, compression)
            text = data.decode("utf-8", errors="replace")
            texts.append(text)
            try:  # and with JSON escapes undone
                texts.append(json.dumps(json.loads(text), ensure_ascii=False))
            except ValueError:
                pass
    return texts


def broker_texts(client: Any) -> list[str]:
    """Everything Redis holds, as text: every key and every value read by its type, with
    kombu message bodies decoded."""
    texts: list[str] = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        values: list[bytes]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "stream":
            values = [part for _, fields in client.xrange(key) for pair in fields.items()
                      for part in pair]
        else:
            raise AssertionError(f"cannot read Redis key {key!r} of type {kind}")
        texts.append(key.decode("utf-8", errors="replace"))
        for value in values:
            texts.extend(_decoded(value))
    return texts


def test_broker_search_finds_a_secret_in_task_arguments(redis_url: str):
    """The positive control of the broker search below: a message sent the way evalq sends
    tasks, with a secret in its arguments (masked in the headers' argsrepr, as a careful
    task would), is found, though not in the raw values."""
    from workers.celery_app import app as celery_app

    secret = f"sk-evalq-probe-{uuid.uuid4().hex}"
    probe_url = redis_url.rsplit("/", 1)[0] + "/15"  # not the broker's database
    client = redis.Redis.from_url(probe_url)
    client.flushdb()
    try:
        with celery_app.connection_for_write(probe_url) as conn, conn.Producer() as producer:
            celery_app.send_task("evalq.leak_probe", args=(f"prompt {secret}",),
                                 kwargs={"key": secret}, argsrepr="(masked)",
                                 kwargsrepr="{}", queue="evalq.leak-probe",
                                 producer=producer)
        assert client.llen("evalq.leak-probe") == 1
        raw = " ".join(str(client.dump(k)) for k in client.scan_iter())
        assert secret not in raw  # what a search of the raw values would have missed
        found = [text for text in broker_texts(client) if secret in text]
        assert any(f"prompt {secret}" in text for text in found), found
    finally:
        client.flushdb()


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
        ours = [t for t in tasks  # args shown as a tuple or a list, whoever sent them
                if re.match(rf"[(\[]{exp_id},", str(t.get("args", "")))]
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
    arguments, Flower, the broker (message bodies decoded), the database, logs or
    reports — even when the provider echoes it back in an error message."""
    import sqlalchemy as sa

    from scheduler.reports.experiment import experiment_report, load_items

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
    from scheduler.reports.html import render_experiment_html
    from scheduler.reports.junit import write_junit

    data, (_, _, item_rows) = experiment_report(exp_id), load_items(exp_id)
    places["html report"] = render_experiment_html(data, item_rows)
    write_junit(data, item_rows, tmp_path / "junit.xml")
    places["junit"] = (tmp_path / "junit.xml").read_text()
    places["broker"] = "\n".join(broker_texts(redis.Redis.from_url(redis_url)))
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
