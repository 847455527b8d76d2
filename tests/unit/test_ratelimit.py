"""The shared rate limiter against a real Redis of this module's own: sliding-window
bounds and throughput from several "processes" (limiter instances, each with its own
client), token accounting, the shared pause, no Redis traffic for unlimited models,
failing open, and the in-process limiter of embedded mode."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bench.fakellm import FakeLLM
from models.settings import Settings
from tests.support import RedisServer, free_port
from workers.llm.calls import call_model
from workers.llm.ratelimit import (
    Bucket,
    Limit,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    estimate_tokens,
    limiter_for,
    parse_limits,
)

MODEL = "openai/fake-model"


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture
def url(redis_srv: RedisServer) -> str:
    """The module's Redis, emptied for this test."""
    redis.Redis.from_url(redis_srv.url).flushdb()
    return redis_srv.url


def max_in_window(stamps: list[float], width: float) -> int:
    """Most timestamps in any half-open window [t, t + width)."""
    stamps, best, lo = sorted(stamps), 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def hammer(limiters: list[RateLimiter], tasks_each: int, seconds: float,
                 tokens: float = 0.0, actual: float | None = None) -> list[float]:
    """Acquire in a tight loop from `tasks_each` tasks per limiter for `seconds`;
    the admission times."""
    stamps: list[float] = []
    end = time.monotonic() + seconds

    async def loop(limiter: RateLimiter) -> None:
        while time.monotonic() < end:
            ticket = await limiter.acquire("m", tokens, tokens)
            stamps.append(time.monotonic())
            if actual is not None:
                await limiter.record_usage(ticket, actual)

    await asyncio.gather(*[loop(lim) for lim in limiters for _ in range(tasks_each)])
    for limiter in limiters:
        await limiter.aclose()
    return stamps


def commands(client: redis.Redis) -> int:
    """Commands Redis has executed so far, INFO itself excluded (`client` stays connected:
    a new connection would count its own HELLO)."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def test_limits_become_paced_buckets_and_bad_keys_are_refused():
    bucket = Bucket.for_limit(600, 1.0)  # 100 per 10 s: a burst of 5, then 9.5/s
    assert bucket.increment_ms == pytest.approx(1000 / 9.5)
    assert bucket.capacity_ms == pytest.approx(5 * 1000 / 9.5)
    assert Bucket.for_limit(None, 1.0).increment_ms == 0
    small = Bucket.for_limit(6, 1.0)  # 1 per 10 s is too few: budgeted per minute
    assert 60_000 / small.increment_ms + small.capacity_ms / small.increment_ms <= 6
    assert parse_limits({"a": {"rpm": 60}, "b": {"tpm": 0}}) == {"a": Limit(rpm=60)}
    with pytest.raises(ValueError, match=r"unknown keys \['rps'\].*\"rpm\" and/or \"tpm\""):
        parse_limits({"a": {"rps": 10}})
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(messages, {"max_tokens": 50}) == (100, 150)
    assert estimate_tokens(messages, None)[1] > 100


@pytest.mark.parametrize("kind", ["redis", "local"])
def test_every_10s_window_holds_at_most_the_limit_at_close_to_full_speed(url: str, kind: str):
    rpm = 1200  # 200 per 10 s window
    if kind == "redis":  # two "processes", four tasks each
        limiters: list[RateLimiter] = [RedisRateLimiter(url, {"m": Limit(rpm=rpm)})
                                       for _ in range(2)]
    else:
        limiters = [LocalRateLimiter({"m": Limit(rpm=rpm)})]
    seconds = 11.5
    stamps = asyncio.run(hammer(limiters, 8 // len(limiters), seconds))
    window_max = max_in_window(stamps, 10.0)
    assert window_max <= rpm / 6 * 1.02, f"{window_max} requests in one 10 s window"
    assert max_in_window(stamps, 1.0) <= 32, "not paced: a burst within one second"
    observed = [t for t in stamps if t - stamps[0] < seconds]
    rate = len(observed) / seconds * 60
    assert rate >= 0.8 * rpm, f"throughput {rate:.0f} rpm of {rpm}"


def test_token_limit_bounds_windows_and_usage_corrects_the_estimate(url: str):
    tpm = 60_000  # 10 000 tokens per 10 s: a burst of 500, then 950 tokens/s
    limit = {"m": Limit(tpm=tpm)}
    # Estimates of 100 tokens corrected to 25: four times the requests of uncorrected ones.
    plain = asyncio.run(hammer([RedisRateLimiter(url, limit)], 4, 3.0, tokens=100))
    redis.Redis.from_url(url).flushdb()
    corrected = asyncio.run(hammer([RedisRateLimiter(url, limit)], 4, 3.0, tokens=100,
                                   actual=25))
    assert max_in_window(plain, 3.0) * 100 <= 500 + 950 * 3 * 1.02
    assert len(plain) * 100 >= 0.8 * 950 * 3
    assert len(corrected) >= 2.5 * len(plain), (len(corrected), len(plain))

    async def overspend() -> float:  # real usage far above the estimate is owed
        limiter = RedisRateLimiter(url, limit)
        ticket = await limiter.acquire("m", 10)
        await limiter.record_usage(ticket, 2000)  # 1500 over the burst: ~1.6 s of debt
        started = time.monotonic()
        await limiter.acquire("m", 100)
        await limiter.aclose()
        return time.monotonic() - started

    redis.Redis.from_url(url).flushdb()
    waited = asyncio.run(overspend())
    assert 1.3 <= waited <= 4, waited


def test_a_pause_blocks_every_client_and_the_longest_pause_wins(url: str):
    limits = {"m": Limit(rpm=60_000)}

    async def scenario() -> float:
        one, two = RedisRateLimiter(url, limits), RedisRateLimiter(url, limits)
        await one.acquire("m")
        await one.pause("m", 1.5)
        await two.pause("m", 0.2)  # shorter: does not cut the first one
        assert 1200 <= redis.Redis.from_url(url).pttl("evalq:rl:pause:m") <= 1500
        started = time.monotonic()
        await asyncio.gather(one.acquire("m"), two.acquire("m"))
        waited = time.monotonic() - started
        await one.aclose()
        await two.aclose()
        return waited

    waited = asyncio.run(scenario())
    assert 1.2 <= waited <= 3.5, waited


def test_a_429_seen_by_call_model_pauses_another_process(url: str, fake_llm: FakeLLM):
    settings = Settings(cache_url=url, rate_limits={MODEL: {"rpm": 6000}}, max_attempts=3,
                        retry_initial_s=0.0, retry_max_s=5, request_timeout_s=5)
    fake_llm.script([{"status": 429, "headers": {"Retry-After": "1.5"}, "match": "first"}])
    other = RedisRateLimiter(url, parse_limits(settings.rate_limits))

    async def scenario() -> tuple[Any, float]:
        call = asyncio.create_task(call_model(
            model=MODEL, messages=[{"role": "user", "content": "first"}], settings=settings,
            api_base=fake_llm.base_url))
        while fake_llm.stats()["total"] == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the 429 has been answered and the pause set
        started = time.monotonic()
        await other.acquire(MODEL)
        waited = time.monotonic() - started
        await other.aclose()
        return await call, waited

    outcome, waited = asyncio.run(scenario())
    assert outcome.output == "first" and outcome.attempts == 2
    assert waited >= 1.0, f"the other process went ahead after {waited:.2f}s"
    arrivals = fake_llm.stats()["arrivals"]
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 1.4


def test_unlimited_models_make_no_redis_calls(url: str, fake_llm: FakeLLM):
    settings = Settings(cache_url=url, rate_limits={"openai/limited": {"rpm": 6000}},
                        request_timeout_s=5)

    async def calls(model: str) -> None:
        limiter = limiter_for(settings)
        assert isinstance(limiter, RedisRateLimiter)
        for _ in range(20):
            ticket = await limiter.acquire(model, 100)
            await limiter.record_usage(ticket, 10)
            await limiter.release(ticket)
            await limiter.pause(model, 0.001)
        out = await call_model(model=model, messages=[{"role": "user", "content": "hi"}],
                               settings=settings, api_base=fake_llm.base_url)
        assert out.error is None, out.error
        await limiter.aclose()

    observer = redis.Redis.from_url(url)
    before = commands(observer)
    asyncio.run(calls(MODEL))
    assert commands(observer) == before, "an unlimited model talked to Redis"
    asyncio.run(calls("openai/limited"))  # the control: a limited model does
    assert commands(observer) > before


def test_unreachable_redis_fails_open_and_warns_once(caplog: pytest.LogCaptureFixture):
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", {"m": Limit(rpm=6)})

    async def scenario() -> list[Any]:
        tickets = [await limiter.acquire("m", 10) for _ in range(20)]
        await limiter.pause("m", 5)
        tickets.append(await limiter.acquire("m", 10))
        return tickets

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="workers.llm.ratelimit"):
        tickets = asyncio.run(scenario())
    assert time.monotonic() - started < 5
    assert all(t is not None and not t.tracked for t in tickets)
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_embedded_mode_uses_one_in_process_limiter_across_threads_and_loops():
    settings = Settings(broker_url=None, cache_url=None, rate_limits={"m": {"rpm": 600}})
    found: list[RateLimiter] = []
    stamps: list[float] = []

    def thread(pause: bool) -> None:
        async def run() -> None:
            limiter = limiter_for(settings)
            found.append(limiter)
            if pause:
                await limiter.pause("m", 1.0)
            else:
                await asyncio.sleep(0.2)
                for _ in range(8):
                    await limiter.acquire("m")
                    stamps.append(time.monotonic())

        asyncio.run(run())

    started = time.monotonic()
    threads = [threading.Thread(target=thread, args=(i == 0,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert isinstance(found[0], LocalRateLimiter) and all(f is found[0] for f in found)
    assert len(stamps) == 16
    assert min(stamps) - started >= 0.9, "acquired during the pause"
    # a burst of 5, then one every 1/9.5 s: 16 admissions take at least 11/9.5 s
    assert max(stamps) - min(stamps) >= 11 / 9.5 * 0.95
