"""Secrets stay in the environment: header parameters carrying credentials and API base
URLs with a password are refused before anything is stored; a provider that echoes a
header value back does not get it into the stored error or the HTML report.

Embedded mode on a fresh SQLite file, through the CLI runner, against the fake
OpenAI-compatible server (real litellm HTTP calls)."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from bench.fakellm import FakeLLM
from models.db import session_scope
from models.tables import Dataset, Experiment, Result
from scheduler import enqueue_offline_run
from scheduler.cli.main import app
from scheduler.errors import InputError
from tests.factories import write_jsonl
from tests.support import EnvPatch
from workers.llm.calls import header_values, redact
from workers.runtime.logsafe import mask_url, scrub, secret_param, strip_url, url_secret

runner = CliRunner()
ROWS = [{"id": "a", "input": "alpha", "expected": "alpha"},
        {"id": "b", "input": "tenant probe", "expected": "tenant probe"}]
BEARER = "Bearer sk-hostile-0123456789abcdefghij"


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _stored() -> tuple[int, int, int]:
    with session_scope() as s:
        return (s.exec(select(func.count()).select_from(Dataset)).one(),
                s.exec(select(func.count()).select_from(Experiment)).one(),
                s.exec(select(func.count()).select_from(Result)).one())


def _database_text(sqlite_url: str) -> str:
    """Every row of every table of the SQLite file, as SQL text."""
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        return "\n".join(conn.iterdump())


# --- header parameters ----------------------------------------------------------------


@pytest.mark.parametrize("param", [
    f'extra_headers={{"Authorization": "{BEARER}"}}',
    'headers={"X-Api-Key": "k-0123456789abcdef"}',
    'default_headers={"Cookie": "session=0123456789abcdef"}',
    'extra_headers={"X-Auth-Token": "0123456789abcdef"}',
    f'extra_headers={{"X-Forwarded-For-Me": "{BEARER}"}}',  # the value gives it away
    'extra_body={"proxy": {"Proxy-Authorization": "Basic dXNlcjpwYXNzd29yZA=="}}',
    'api_key=sk-0123456789abcdefghijkl',
])
def test_header_params_with_credentials_are_refused_before_storage(
        embedded_env, fake_llm: FakeLLM, tmp_path: Path, param: str) -> None:
    dataset = write_jsonl(tmp_path / "cases.jsonl", ROWS)
    code, out, err = _run("run", str(dataset), "--model", "openai/fake",
                          "--api-base", fake_llm.base_url, "--param", param)
    assert code == 2, out + err
    assert "looks like a secret" in err and "env:" in err
    assert "environment" in err and "OPENAI_API_KEY" in err
    assert "0123456789abcdef" not in err  # the message names the parameter, not the value
    assert _stored() == (0, 0, 0)
    assert fake_llm.stats()["total"] == 0


def test_ordinary_params_and_harmless_headers_are_accepted() -> None:
    # max_tokens used to be refused ("token" in the name); a JSON schema may name a
    # property api_key; a tenant header is not a credential.
    assert secret_param("max_tokens", 64) is None
    assert secret_param("max_completion_tokens", 64) is None
    assert secret_param("top_k", 5) is None
    assert secret_param("extra_headers", {"X-Tenant": "acme"}) is None
    schema = {"type": "json_schema", "json_schema": {"name": "creds", "schema": {
        "type": "object", "properties": {"api_key": {"type": "string"}},
        "required": ["api_key"]}}}
    assert secret_param("response_format", schema) is None
    assert secret_param("extra_headers", {"Authorization": "env:GATEWAY_AUTH"}) is None
    assert secret_param("extra_headers", {"Authorization": "x"}) is not None
    assert secret_param("access_token", "x") is not None


# --- header values echoed by the provider ----------------------------------------------


def test_echoed_header_value_is_masked_in_the_error_and_the_html_report(
        embedded_env, sqlite_url: str, fake_llm: FakeLLM, tmp_path: Path) -> None:
    tenant = "tenant-7f3a9c21e5d4"  # allowed: its name and value look like no credential
    other = "zzq-opaque-token-918273645"
    fake_llm.script([{"match": "tenant probe", "status": 400,
                      "message": f"unknown tenant {tenant}; we saw Authorization: Bearer "
                                 f"{other}"}])
    dataset = write_jsonl(tmp_path / "cases.jsonl", ROWS)
    code, out, err = _run("run", str(dataset), "--model", "openai/fake",
                          "--api-base", fake_llm.base_url, "--json",
                          "--param", f'extra_headers={{"X-Tenant": "{tenant}"}}')
    assert code == 1, out + err  # one item failed with the 400
    exp_id = json.loads(out)["experiment_id"]
    sent = [r["headers"] for r in fake_llm.requests()]
    assert any(h.get("X-Tenant") == tenant or h.get("x-tenant") == tenant for h in sent)
    with session_scope() as s:
        errors = [r.error for r in s.exec(select(Result)) if r.error]
    assert len(errors) == 1
    assert "unknown tenant ***" in errors[0] and "Bearer ***" in errors[0]
    assert tenant not in errors[0] and other not in errors[0]

    html = tmp_path / "report.html"
    code, out, err = _run("report", str(exp_id), "--html", str(html))
    assert code in (0, 1), out + err
    page = html.read_text()
    assert "unknown tenant ***" in page
    assert tenant not in page and other not in page
    assert other not in _database_text(sqlite_url)


def test_redact_masks_sent_values_and_credential_shapes(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    basic = base64.b64encode(b"alice:s3cret-pass").decode()
    text = (f"h=abcdef123456 auth=Basic {basic} b={BEARER} url=http://alice:pw1@h/v1 "
            "basic auth failed, max_tokens=64")
    clean = redact(text, ["abcdef123456", "short"])
    assert clean == ("h=*** auth=Basic *** b=Bearer *** url=http://***@h/v1 "
                     "basic auth failed, max_tokens=64")
    assert header_values({"extra_headers": {"X-A": "v1", "X-B": None}, "seed": 1}) == ["v1"]


# --- API base URL with a password ------------------------------------------------------


def test_api_base_with_a_password_is_refused_and_never_stored(
        embedded_env, sqlite_url: str, fake_llm: FakeLLM, tmp_path: Path) -> None:
    password = "pw-hostile-5551234"
    url = f"http://evalq-user:{password}@127.0.0.1:{fake_llm.port}/v1"
    dataset = write_jsonl(tmp_path / "cases.jsonl", ROWS)
    code, out, err = _run("run", str(dataset), "--model", "openai/fake", "--api-base", url)
    assert code == 2, out + err
    assert f"http://127.0.0.1:{fake_llm.port}/v1" in err and "OPENAI_API_KEY" in err
    assert password not in err and "evalq-user" not in err
    with pytest.raises(InputError, match="user name or password"):
        enqueue_offline_run(dataset=dataset, model="openai/fake", api_base=url)
    with pytest.raises(InputError, match="query parameter 'key'"):
        enqueue_offline_run(dataset=dataset, model="openai/fake",
                            api_base=f"{fake_llm.base_url}?key={password}")
    assert _stored() == (0, 0, 0)
    assert fake_llm.stats()["total"] == 0
    assert password not in _database_text(sqlite_url)


def test_a_header_from_the_environment_reaches_the_model_but_not_the_database(
        embedded_env, sqlite_url: str, fake_llm: FakeLLM, tmp_path: Path) -> None:
    """What the refusals tell the user to do instead works: the header value named by
    `env:NAME` is read where the model is called; the row stores only the name."""
    secret = "Bearer gw-env-only-8675309-abcdef"
    fake_llm.script([{"match": "tenant probe", "status": 400,
                      "message": f"gateway saw {secret}"}])
    dataset = write_jsonl(tmp_path / "cases.jsonl", ROWS)
    param = 'extra_headers={"Authorization": "env:EVALQ_TEST_GATEWAY_AUTH"}'
    with EnvPatch(EVALQ_TEST_GATEWAY_AUTH=secret):
        code, out, err = _run("run", str(dataset), "--model", "openai/fake", "--api-base",
                              fake_llm.base_url, "--param", param, "--json")
    assert code == 1, out + err  # the scripted 400
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert [r["auth_sha256"] for r in fake_llm.requests()] == [digest, digest]
    with session_scope() as s:
        assert [e.model_params for e in s.exec(select(Experiment))] == [
            {"extra_headers": {"Authorization": "env:EVALQ_TEST_GATEWAY_AUTH"}}]
        errors = [r.error for r in s.exec(select(Result)) if r.error]
    assert len(errors) == 1 and "gateway saw *** (fakellm)" in errors[0]
    assert "gw-env-only" not in _database_text(sqlite_url)

    code, out, err = _run("run", str(dataset), "--model", "openai/fake", "--api-base",
                          fake_llm.base_url, "--param", param, "--json")
    assert code == 1
    with session_scope() as s:
        missing = s.exec(select(Result).where(Result.experiment_id == 2)).first()
    assert missing is not None and missing.error_type == "AuthenticationError"
    assert "EVALQ_TEST_GATEWAY_AUTH, which is not set" in (missing.error or "")


def test_url_helpers() -> None:
    assert url_secret("http://127.0.0.1:8000/v1?api-version=2024-06-01") is None
    assert url_secret("http://u@h/v1") is not None
    assert strip_url("https://u:p@hooks.example:8443/e?token=T#f") == \
        "https://hooks.example:8443/e"
    assert mask_url("https://u:p@hooks.example/e?token=T&x=1") == \
        "https://***@hooks.example/e?token=***&x=***"
    line = 'HTTP Request: POST https://hooks.example/e?token=T "HTTP/1.1 200 OK"'
    assert scrub(line) == 'HTTP Request: POST https://hooks.example/e "HTTP/1.1 200 OK"'
