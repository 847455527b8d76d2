"""Tests of the fake OpenAI-compatible server, through litellm's real client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp  # noqa: E402
import litellm  # noqa: E402

from bench.fakellm import FakeLLM  # noqa: E402

litellm.suppress_debug_info = True
API_KEY = "sk-test"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    srv = FakeLLM.start()
    yield srv
    srv.stop()
    assert srv.process.returncode == 0


@pytest.fixture
def srv(server: FakeLLM) -> FakeLLM:
    server.reset()
    return server


def ask(srv: FakeLLM, content: Any, **kwargs: Any) -> Any:
    return litellm.completion(
        model="openai/fake",
        api_base=srv.base_url,
        api_key=API_KEY,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        num_retries=0,
        **kwargs,
    )


def raw_post(srv: FakeLLM, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
    """POST a chat completion with urllib; return status, headers and JSON body."""
    request = urllib.request.Request(
        f"{srv.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def hello(text: str = "hi") -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": text}]}


def test_echo_counts_usage(srv: FakeLLM) -> None:
    response = ask(srv, "hello brave new world")
    assert response.choices[0].message.content == "hello brave new world"
    assert response.choices[0].finish_reason == "stop"
    # prompt: "Be brief." (2 words) + 4 words; completion: 4 words
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (6, 4)
    assert response.usage.total_tokens == 10


def test_echo_handles_content_parts(srv: FakeLLM) -> None:
    parts = [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]
    assert ask(srv, parts).choices[0].message.content == "one two three"


def test_answers_and_default_reply(srv: FakeLLM) -> None:
    srv.configure(answers={"capital": "Paris"}, default_reply="I do not know.")
    assert ask(srv, "What is the capital of France?").choices[0].message.content == "Paris"
    assert ask(srv, "Who won?").choices[0].message.content == "I do not know."
    srv.reset()
    assert ask(srv, "Who won?").choices[0].message.content == "Who won?"


def test_scripted_reply_with_usage_override(srv: FakeLLM) -> None:
    srv.script([{"reply": "scripted answer", "usage": {"prompt_tokens": 100}}])
    response = ask(srv, "anything")
    assert response.choices[0].message.content == "scripted answer"
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (100, 102)


def test_scripted_tool_call_is_parsed_by_litellm(srv: FakeLLM) -> None:
    srv.script([{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}])
    response = ask(srv, "weather in Oslo?")
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    (call,) = message.tool_calls
    assert call.id == "call_1"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, litellm.BadRequestError),
        (401, litellm.AuthenticationError),
        (404, litellm.NotFoundError),
        (429, litellm.RateLimitError),
        (500, litellm.InternalServerError),
        (503, litellm.ServiceUnavailableError),
    ],
)
def test_scripted_status_raises_litellm_error(srv: FakeLLM, status: int, error: type) -> None:
    srv.script([{"status": status, "message": f"scripted {status}"}])
    with pytest.raises(error, match=f"scripted {status}") as info:
        ask(srv, "hi")
    assert type(info.value) is error
    assert srv.stats()["by_status"] == {str(status): 1}


def test_scripted_headers_are_sent(srv: FakeLLM) -> None:
    srv.script([{"status": 429, "headers": {"Retry-After": "1"}}])
    status, headers, body = raw_post(srv, hello())
    assert (status, headers["Retry-After"]) == (429, "1")
    assert body["error"]["code"] == "rate_limit_exceeded"


def test_match_only_applies_to_matching_prompts(srv: FakeLLM) -> None:
    srv.script([{"match": "weather", "reply": "sunny"}])
    assert ask(srv, "hello").choices[0].message.content == "hello"
    assert ask(srv, "the weather?").choices[0].message.content == "sunny"
    assert ask(srv, "the weather?").choices[0].message.content == "the weather?"


def test_times_reuses_an_item(srv: FakeLLM) -> None:
    srv.script([{"reply": "A", "times": 2}, {"reply": "B"}])
    replies = [ask(srv, "q").choices[0].message.content for _ in range(4)]
    assert replies == ["A", "A", "B", "q"]


def test_fault_rate_one_fails_everything(srv: FakeLLM) -> None:
    srv.configure(fault_rates={"500": 1.0})
    for _ in range(5):
        with pytest.raises(litellm.InternalServerError):
            ask(srv, "hi")
    assert srv.stats()["by_status"] == {"500": 5}


def test_random_429_carries_retry_after_only_when_configured(srv: FakeLLM) -> None:
    srv.configure(fault_rates={"429": 1.0})
    assert "Retry-After" not in raw_post(srv, hello())[1]
    srv.configure(retry_after="0.1")
    assert raw_post(srv, hello())[1]["Retry-After"] == "0.1"


def test_faults_are_reproducible_after_reset(srv: FakeLLM) -> None:
    def statuses() -> list[int]:
        srv.configure(fault_rates={"500": 0.3, "429": 0.3})
        return [raw_post(srv, hello())[0] for _ in range(30)]

    first = statuses()
    srv.reset()
    assert statuses() == first
    assert {200, 429, 500} == set(first)


def test_stream_is_rejected(srv: FakeLLM) -> None:
    status, _, body = raw_post(srv, {**hello(), "stream": True})
    assert status == 400
    assert "stream" in body["error"]["message"].lower()


def test_scripted_timeout_makes_the_client_time_out(srv: FakeLLM) -> None:
    srv.script([{"timeout": True}])
    with pytest.raises(litellm.Timeout):
        ask(srv, "hi", timeout=0.5)


def test_latency_override(srv: FakeLLM) -> None:
    srv.script([{"reply": "slow", "latency_ms": 300}])
    started = time.monotonic()
    assert ask(srv, "hi").choices[0].message.content == "slow"
    assert time.monotonic() - started >= 0.3


def test_bad_control_input_is_rejected(srv: FakeLLM) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        srv.script([{"nothing": 1}])
    with pytest.raises(ValueError, match="unknown config keys"):
        srv.configure(latency=5)


def test_stats_count_requests_and_answers(srv: FakeLLM) -> None:
    srv.script([{"status": 429, "times": 2}])
    before = time.time()
    for _ in range(5):
        try:
            ask(srv, "hi")
        except litellm.RateLimitError:
            pass
    stats = srv.stats()
    assert stats["total"] == 5
    assert stats["by_status"] == {"429": 2, "200": 3}
    assert len(stats["arrivals"]) == 5
    assert all(before <= t <= time.time() for t in stats["arrivals"])
    assert stats["arrivals"] == sorted(stats["arrivals"])


def test_requests_never_contain_the_raw_key(srv: FakeLLM) -> None:
    ask(srv, "remember me")
    (recorded,) = srv.requests()
    assert API_KEY not in json.dumps(recorded)
    assert recorded["has_authorization"] is True
    assert recorded["auth_sha256"] == hashlib.sha256(f"Bearer {API_KEY}".encode()).hexdigest()
    assert recorded["body"]["messages"][-1]["content"] == "remember me"
    assert recorded["path"] == "/v1/chat/completions"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_of_similar_texts_are_closer(srv: FakeLLM) -> None:
    texts = [
        "The cat sat on the mat",
        "the cat sat on a mat today",
        "Quarterly revenue grew strongly in Europe",
    ]
    response = litellm.embedding(
        model="openai/text-embedding-3-small", api_base=srv.base_url, api_key=API_KEY, input=texts
    )
    a, b, c = (item["embedding"] for item in response.data)
    assert len(a) == 16
    assert cosine(a, b) > 0.7
    assert cosine(a, b) > cosine(a, c) + 0.3
    assert response.usage.prompt_tokens == 6 + 7 + 6


def test_throughput_smoke(srv: FakeLLM) -> None:
    srv.configure(latency_ms=50)

    async def burst(n: int) -> list[int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:

            async def one() -> int:
                url = f"{srv.base_url}/chat/completions"
                async with session.post(url, json=hello()) as resp:
                    await resp.read()
                    return resp.status

            return await asyncio.gather(*(one() for _ in range(n)))

    started = time.monotonic()
    statuses = asyncio.run(burst(200))
    assert time.monotonic() - started < 3
    assert statuses == [200] * 200
    assert srv.stats()["max_in_flight"] > 1
