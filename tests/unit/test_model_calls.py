"""Model calls through litellm's real HTTP client against the fake server: retry
classification, Retry-After, attempts, usage and errors recorded."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.fakellm import FakeLLM
from models.settings import Settings
from workers.llm.calls import call_model, is_retryable, missing_credentials, redact

MODEL = "openai/fake-model"


def _call(fake: FakeLLM, settings: Settings, text: str = "hello"):  # type: ignore[no-untyped-def]
    return asyncio.run(
        call_model(model=MODEL, messages=[{"role": "user", "content": text}],
                   settings=settings, api_base=fake.base_url)
    )


@pytest.fixture
def settings() -> Settings:
    return Settings(max_attempts=4, retry_initial_s=0.01, retry_max_s=0.5,
                    request_timeout_s=2)


def test_success_records_output_usage_and_one_attempt(fake_llm: FakeLLM, settings: Settings):
    fake_llm.script([{"reply": "forty two"}])
    out = _call(fake_llm, settings, "what is six times seven")
    assert out.error is None
    assert out.output == "forty two"
    assert out.attempts == 1
    assert out.prompt_tokens == 5 and out.completion_tokens == 2
    assert out.latency_ms is not None and out.latency_ms > 0
    assert fake_llm.stats()["total"] == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried_then_succeed(fake_llm: FakeLLM, settings: Settings,
                                                   status: int):
    fake_llm.script([{"status": status, "times": 2}, {"reply": "ok"}])
    out = _call(fake_llm, settings)
    assert out.error is None, out.error
    assert out.output == "ok"
    assert out.attempts == 3
    assert fake_llm.stats()["total"] == 3


@pytest.mark.parametrize(("status", "error_type"), [
    (400, "BadRequestError"), (401, "AuthenticationError"), (402, "PaymentRequiredError"),
    (403, "PermissionDeniedError"), (404, "NotFoundError"), (422, "BadRequestError"),
])
def test_permanent_errors_fail_fast(fake_llm: FakeLLM, settings: Settings, status: int,
                                    error_type: str):
    fake_llm.script([{"status": status, "message": "nope"}, {"reply": "never reached"}])
    out = _call(fake_llm, settings)
    assert out.output is None
    assert out.error_type == error_type  # litellm raises a bare APIError for 402 and 403
    assert out.attempts == 1
    assert fake_llm.stats()["total"] == 1


@pytest.mark.parametrize("status", [408, 409, 502, 529])
def test_other_transient_statuses_are_retried(fake_llm: FakeLLM, settings: Settings,
                                              status: int):
    fake_llm.script([{"status": status}, {"reply": "ok"}])
    out = _call(fake_llm, settings)
    assert (out.output, out.attempts) == ("ok", 2)


def test_missing_api_key_is_a_permanent_authentication_error(
        fake_llm: FakeLLM, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    # The OpenAI client refuses to send anything without a key; litellm maps that to a 500
    # InternalServerError, which would otherwise be retried on every item.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = _call(fake_llm, settings)
    assert out.error_type == "AuthenticationError", out.error
    assert out.error is not None and "OPENAI_API_KEY" in out.error
    assert missing_credentials(out.error)
    assert out.attempts == 1
    assert fake_llm.stats()["total"] == 0  # no request left the process


def test_retry_classification_of_litellm_exceptions(fake_llm: FakeLLM,
                                                    monkeypatch: pytest.MonkeyPatch):
    """The predicate itself, on the exceptions litellm really raises."""
    from workers.llm.calls import setup_litellm

    litellm = setup_litellm()

    def raised(api_base: str = fake_llm.base_url) -> BaseException:
        try:
            asyncio.run(litellm.acompletion(model=MODEL, messages=[{"role": "user",
                                                                    "content": "x"}],
                                            api_base=api_base, num_retries=0, timeout=2))
        except Exception as exc:  # noqa: BLE001 - the exception is the point
            return exc
        raise AssertionError("the call succeeded")

    for status, retry in [(400, False), (401, False), (403, False), (404, False),
                          (422, False), (429, True), (500, True), (503, True)]:
        fake_llm.script([{"status": status}])
        exc = raised()
        assert is_retryable(exc) is retry, (status, type(exc).__name__, exc)
    exc = raised(api_base="http://127.0.0.1:9/v1")  # nothing listens: connection error
    assert is_retryable(exc), exc
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    exc = raised()
    assert type(exc).__name__ == "InternalServerError" and not is_retryable(exc), exc


def test_missing_credentials_messages():
    for text in ["OpenAIException - Missing credentials. Please pass an `api_key`",
                 "Missing Anthropic API Key - A call is being made to anthropic",
                 "The api_key client option must be set either by passing api_key",
                 "OpenAI client is not initialized. Make sure api_key is passed",
                 "api_key is None. Please set AZURE_AI_API_KEY"]:
        assert missing_credentials(text), text
    for text in ["Incorrect API key provided.", "Connection error.", "Rate limit reached."]:
        assert not missing_credentials(text), text


def test_attempts_are_bounded(fake_llm: FakeLLM, settings: Settings):
    fake_llm.script([{"status": 500, "times": 10}])
    out = _call(fake_llm, settings)
    assert out.error_type == "InternalServerError"
    assert out.attempts == settings.max_attempts
    assert fake_llm.stats()["total"] == settings.max_attempts


def test_timeout_is_retried(fake_llm: FakeLLM):
    settings = Settings(max_attempts=2, retry_initial_s=0.01, request_timeout_s=0.5)
    fake_llm.script([{"timeout": True}, {"reply": "after timeout"}])
    out = _call(fake_llm, settings)
    assert out.output == "after timeout"
    assert out.attempts == 2


def test_retry_after_header_is_honoured(fake_llm: FakeLLM):
    settings = Settings(max_attempts=3, retry_initial_s=0.0, retry_max_s=5)
    fake_llm.script([{"status": 429, "headers": {"Retry-After": "1"}}, {"reply": "ok"}])
    started = time.monotonic()
    out = _call(fake_llm, settings)
    elapsed = time.monotonic() - started
    assert out.output == "ok" and out.attempts == 2
    assert elapsed >= 0.95, f"retried after {elapsed:.2f}s, before the asked 1 s"


def test_error_messages_never_carry_the_api_key(fake_llm: FakeLLM, settings: Settings,
                                                monkeypatch: pytest.MonkeyPatch):
    secret = "sk-evalq-secret-in-error-1234567890"
    monkeypatch.setenv("EVALQ_TEST_API_KEY", secret)
    assert redact(f"bad key {secret} here") == "bad key *** here"
    fake_llm.script([{"status": 401, "message": f"invalid key {secret}"}])
    out = _call(fake_llm, settings)
    assert out.error is not None and secret not in out.error


def test_unknown_model_price_is_flagged(fake_llm: FakeLLM, settings: Settings):
    out = _call(fake_llm, settings)
    assert out.cost_usd == 0.0
    assert out.cost_known is False


def test_known_model_has_a_cost(fake_llm: FakeLLM, settings: Settings):
    fake_llm.script([{"reply": "a b c", "usage": {"prompt_tokens": 1000,
                                                  "completion_tokens": 1000,
                                                  "total_tokens": 2000}}])
    out = asyncio.run(call_model(model="openai/gpt-4o-mini",
                                 messages=[{"role": "user", "content": "x"}],
                                 settings=settings, api_base=fake_llm.base_url))
    assert out.error is None, out.error
    assert out.cost_known is True
    assert out.cost_usd > 0
