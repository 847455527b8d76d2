"""A per-model rate limit shared by every worker process and machine, through Redis.

`settings.rate_limits` gives, per litellm model name, requests per minute (`rpm`) and/or
tokens per minute (`tpm`); a model without an entry is unlimited and costs no Redis round
trip. `call_model` acquires before every attempt (a retry is a request too), records the
real token usage after a success, and turns a 429's Retry-After into a pause of that model
for every worker.

Algorithm: GCRA (a virtual-scheduling token bucket), one bucket for requests and one for
tokens, both checked and charged atomically by one Lua script on the Redis clock. Each
limit is turned into a budget per 10-second window, `limit / 6`; the bucket holds a small
burst (5 % of that budget, at least one request) and refills at `(budget - burst) / 10 s`.
Since a bucket admits at most `burst + rate * W` in any window of length W, every sliding
10 s (and 60 s) window stays within the limit, while throughput is 95 % of it and requests
are paced: 600 rpm admits a 5-request burst, then one request every ~105 ms, never 600 in
one second. Limits too small for a 10 s budget of two requests are budgeted per 60 s.
A single request estimated above the token burst is admitted only when the token bucket
is empty, so one oversized request may overshoot a window by its own size.

Tokens are reserved before the call (prompt characters / 4 plus `max_tokens`, or
`DEFAULT_COMPLETION_TOKENS`) and corrected with the real usage afterwards; a failed
attempt keeps its prompt estimate and gives back the completion allowance.

A pause (`evalq:rl:pause:{model}`, PX = Retry-After, the longest one wins) blocks
`acquire` of that model in every process until it expires.

Failure policy: the limiter **fails open**. If Redis is unreachable, calls proceed
unthrottled and one WARNING is logged per outage (Redis is tried again after
`REDIS_RETRY_S`); a limiter must never block an evaluation forever.

Which Redis: `workers.llm.redis_url.redis_url` (EVALQ_CACHE_URL, else the broker when it is
Redis). Embedded mode without one uses `LocalRateLimiter`: the same semantics inside this
process, on the monotonic clock. A RabbitMQ deployment with limits and no EVALQ_CACHE_URL
is refused, at worker start and here, rather than limited per process (which would
multiply every limit by the number of workers): `require_shared_rate_limits`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.settings import Settings
from workers.llm.redis_url import RedisRequired, redis_url, url_scheme

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "Limit",
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "Ticket",
    "estimate_tokens",
    "limiter_for",
    "parse_limits",
    "require_shared_rate_limits",
]

WINDOW_S = 10.0  # the window the limit is guaranteed over (and every multiple of it)
BURST_FRACTION = 0.05  # share of a window's budget that may go out at once
DEFAULT_COMPLETION_TOKENS = 256  # completion allowance when a call sets no max_tokens
MAX_SLEEP_S = 2.0  # a waiter re-checks at least this often
REDIS_RETRY_S = 5.0  # after Redis failed, calls go unthrottled this long before trying again
KEY_PREFIX = "evalq:rl"

# KEYS: request bucket, token bucket, pause.  ARGV: request increment and capacity (ms),
# token increment per token and capacity (ms), token cost.  An increment of 0 means that
# dimension is unlimited.  Returns 0 when admitted (both buckets charged), else the wait
# in ms before asking again.
_ACQUIRE_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local pause = redis.call('PTTL', KEYS[3])
if pause > 0 then return pause end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function tat_of(key)
  local raw = redis.call('GET', key)
  local tat = now
  if raw then tat = math.max(tonumber(raw), now) end
  return tat
end
local function wait_for(tat, increment, capacity)
  if increment <= capacity then return tat + increment - now - capacity end
  return tat - now  -- larger than the bucket: admitted only when it is empty
end
local req_inc, req_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok_inc, tok_cap = tonumber(ARGV[3]) * tonumber(ARGV[5]), tonumber(ARGV[4])
local req_tat, tok_tat, wait = now, now, 0
if req_inc > 0 then
  req_tat = tat_of(KEYS[1])
  wait = math.max(wait, wait_for(req_tat, req_inc, req_cap))
end
if tok_inc > 0 then
  tok_tat = tat_of(KEYS[2])
  wait = math.max(wait, wait_for(tok_tat, tok_inc, tok_cap))
end
if wait > 0 then return math.ceil(wait) end
if req_inc > 0 then
  local new = req_tat + req_inc
  redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
end
if tok_inc > 0 then
  local new = tok_tat + tok_inc
  redis.call('SET', KEYS[2], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
end
return 0
"""

# KEYS: token bucket.  ARGV: the correction in ms (negative gives capacity back).
_ADJUST_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local raw = redis.call('GET', KEYS[1])
local tat = now
if raw then tat = tonumber(raw) end
tat = tat + tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
end
return 0
"""

# KEYS: pause.  ARGV: ms.  Keeps the longest pause; returns the pause now in force (ms).
_PAUSE_LUA = """
local current = redis.call('PTTL', KEYS[1])
local asked = tonumber(ARGV[1])
if current < asked then
  redis.call('SET', KEYS[1], '1', 'PX', asked)
  return asked
end
return current
"""


@dataclass(frozen=True)
class Limit:
    """One model's limits, per minute; None is unlimited."""

    rpm: float | None = None
    tpm: float | None = None


@dataclass(frozen=True)
class Bucket:
    """GCRA parameters of one dimension: ms per unit and the burst capacity in ms."""

    increment_ms: float = 0.0  # 0: unlimited
    capacity_ms: float = 0.0

    @classmethod
    def for_limit(cls, per_minute: float | None, min_burst: float) -> Bucket:
        """Pace `per_minute` so that every 10 s (or, for tiny limits, 60 s) window holds at
        most its share of the limit, with a burst of 5 % of that share."""
        if not per_minute or per_minute <= 0:
            return cls()
        for window in (WINDOW_S, 60.0):
            budget = per_minute * window / 60.0
            burst = max(min_burst, BURST_FRACTION * budget)
            if budget >= 2 * burst:
                rate = (budget - burst) / window  # units per second
                return cls(1000.0 / rate, burst * 1000.0 / rate)
        rate = per_minute / 60.0  # under 2 per minute: exact pacing, burst of one
        return cls(1000.0 / rate, min_burst * 1000.0 / rate)

    def wait_ms(self, tat: float, now: float, cost: float) -> float:
        """How long before `cost` units fit (<= 0: now); mirrors the Lua script."""
        increment = self.increment_ms * cost
        if increment <= self.capacity_ms:
            return max(tat, now) + increment - now - self.capacity_ms
        return max(tat, now) - now


@dataclass(frozen=True)
class ModelBuckets:
    """The buckets of one limited model."""

    requests: Bucket
    tokens: Bucket

    @classmethod
    def of(cls, limit: Limit) -> ModelBuckets:
        return cls(Bucket.for_limit(limit.rpm, 1.0), Bucket.for_limit(limit.tpm, 1.0))


@dataclass
class Ticket:
    """An admitted request: what it reserved, so the real usage can correct it."""

    model: str
    tokens: float
    prompt_tokens: float = 0.0
    tracked: bool = True  # False: admitted by failing open, nothing to correct


def parse_limits(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, Limit]:
    """`settings.rate_limits` as Limits; entries without a positive rpm or tpm are dropped,
    an unknown key is an error saying which ones exist."""
    limits: dict[str, Limit] = {}
    for model, spec in raw.items():
        unknown = set(spec) - {"rpm", "tpm"}
        if unknown:
            raise ValueError(f"EVALQ_RATE_LIMITS[{model!r}]: unknown keys {sorted(unknown)}; "
                             'use "rpm" and/or "tpm", e.g. {"rpm": 600, "tpm": 200000}')
        rpm, tpm = spec.get("rpm"), spec.get("tpm")
        limit = Limit(float(rpm) if rpm else None, float(tpm) if tpm else None)
        if limit.rpm or limit.tpm:
            limits[model] = limit
    return limits


def require_shared_rate_limits(settings: Settings) -> None:
    """Refuse a distributed deployment whose EVALQ_RATE_LIMITS cannot be shared: rate
    limits are kept in Redis so that every worker draws on the same budget. Also
    validates EVALQ_CACHE_URL. Raises RedisRequired saying what to set."""
    url = redis_url(settings)
    if url is not None or settings.embedded:
        return
    limited = sorted(parse_limits(settings.rate_limits))
    if not limited:
        return
    assert settings.broker_url is not None  # not embedded
    raise RedisRequired(
        f"EVALQ_RATE_LIMITS limits {', '.join(limited)}, but there is no Redis to share the "
        f"limits between workers: the broker is {url_scheme(settings.broker_url)}, not Redis, "
        "and EVALQ_CACHE_URL is unset. Set EVALQ_CACHE_URL=redis://host:6379/0 (the rate "
        "limiter's and the response cache's Redis), or unset EVALQ_RATE_LIMITS"
    )


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p["text"]) if isinstance(p, dict) and isinstance(p.get("text"), str)
                   else len(json.dumps(p, default=str)) for p in content)
    return 0 if content is None else len(json.dumps(content, default=str))


def estimate_tokens(messages: list[dict[str, Any]], params: Mapping[str, Any] | None = None
                    ) -> tuple[int, int]:
    """(prompt estimate, total estimate) of a call: characters / 4, plus `max_tokens`
    (or `max_completion_tokens`, else DEFAULT_COMPLETION_TOKENS) for the completion."""
    chars = sum(_text_length(m.get("content")) + _text_length(m.get("tool_calls"))
                for m in messages)
    if params and params.get("tools"):
        chars += len(json.dumps(params["tools"], default=str))
    prompt = math.ceil(chars / 4)
    params = params or {}
    completion = params.get("max_tokens") or params.get("max_completion_tokens")
    return prompt, prompt + int(completion or DEFAULT_COMPLETION_TOKENS)


class RateLimiter:
    """The interface `call_model` uses; subclasses keep the buckets somewhere."""

    def __init__(self, limits: Mapping[str, Limit]) -> None:
        self.buckets = {model: ModelBuckets.of(limit) for model, limit in limits.items()}

    def limited(self, model: str) -> bool:
        """Whether calls of `model` go through the limiter at all."""
        return model in self.buckets

    async def acquire(self, model: str, est_tokens: float = 0.0,
                      prompt_tokens: float = 0.0) -> Ticket | None:
        """Wait (asyncio.sleep) until `model` may take one more request of `est_tokens`,
        and charge it. None for an unlimited model (no Redis round trip)."""
        buckets = self.buckets.get(model)
        if buckets is None:
            return None
        cost = est_tokens if buckets.tokens.increment_ms else 0.0
        while True:
            wait_ms = await self._try(model, buckets, cost)
            if wait_ms is None:
                return Ticket(model, 0.0, 0.0, tracked=False)
            if wait_ms <= 0:
                return Ticket(model, cost, min(prompt_tokens, cost))
            await asyncio.sleep(min(wait_ms / 1000.0, MAX_SLEEP_S))

    async def record_usage(self, ticket: Ticket | None, tokens: float) -> None:
        """Correct a ticket's token reservation to what the call really used."""
        if ticket is None or not ticket.tracked:
            return
        buckets = self.buckets.get(ticket.model)
        if buckets is None or not buckets.tokens.increment_ms or tokens == ticket.tokens:
            return
        await self._adjust(ticket.model, (tokens - ticket.tokens) * buckets.tokens.increment_ms)
        ticket.tokens = tokens

    async def release(self, ticket: Ticket | None) -> None:
        """A failed attempt: keep its prompt estimate, give back the completion allowance."""
        if ticket is not None:
            await self.record_usage(ticket, ticket.prompt_tokens)

    async def pause(self, model: str, seconds: float) -> None:
        """Stop every client from calling `model` for `seconds` (a longer pause in force is
        kept). Applies to limited models only: they are the ones that acquire."""
        if model in self.buckets and seconds > 0:
            await self._pause(model, math.ceil(seconds * 1000))

    async def _try(self, model: str, buckets: ModelBuckets, cost: float) -> float | None:
        raise NotImplementedError

    async def _adjust(self, model: str, delta_ms: float) -> None:
        raise NotImplementedError

    async def _pause(self, model: str, ms: int) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections, if any."""


class LocalRateLimiter(RateLimiter):
    """The same buckets in this process (embedded mode): thread-safe, loop-independent."""

    def __init__(self, limits: Mapping[str, Limit]) -> None:
        super().__init__(limits)
        self._lock = threading.Lock()  # held for a few arithmetic operations, never awaited
        self._tats: dict[tuple[str, str], float] = {}
        self._paused_until: dict[str, float] = {}

    @staticmethod
    def _now_ms() -> float:
        return time.monotonic() * 1000.0

    async def _try(self, model: str, buckets: ModelBuckets, cost: float) -> float | None:
        with self._lock:
            now = self._now_ms()
            paused = self._paused_until.get(model, 0.0) - now
            if paused > 0:
                return paused
            checks = [(kind, bucket, units) for kind, bucket, units in
                      (("req", buckets.requests, 1.0), ("tok", buckets.tokens, cost))
                      if bucket.increment_ms]
            tats = {kind: max(self._tats.get((model, kind), now), now) for kind, _, _ in checks}
            wait = max([b.wait_ms(tats[k], now, u) for k, b, u in checks], default=0.0)
            if wait > 0:
                return wait
            for kind, bucket, units in checks:
                self._tats[(model, kind)] = tats[kind] + bucket.increment_ms * units
            return 0.0

    async def _adjust(self, model: str, delta_ms: float) -> None:
        with self._lock:
            now = self._now_ms()
            self._tats[(model, "tok")] = self._tats.get((model, "tok"), now) + delta_ms

    async def _pause(self, model: str, ms: int) -> None:
        with self._lock:
            until = self._now_ms() + ms
            self._paused_until[model] = max(self._paused_until.get(model, 0.0), until)


class RedisRateLimiter(RateLimiter):
    """The buckets in Redis, shared by every process; one instance per event loop.

    Only one task per model of this instance polls Redis at a time; the others queue
    behind it (FIFO), so a crowd of waiters costs one round trip per attempt, not one
    each. Fails open, see the module docstring.
    """

    _warned: set[str] = set()  # URLs whose outage was already logged (class-wide)

    def __init__(self, url: str, limits: Mapping[str, Limit]) -> None:
        super().__init__(limits)
        self.url = url
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._gates: dict[str, asyncio.Lock] = {}
        self._down_until = 0.0

    def _script(self, name: str) -> Any:
        if self._client is None:
            import redis.asyncio  # lazy: ~130 ms to import; only a Redis limiter needs it

            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=1.0, socket_timeout=2.0)
            for key, source in (("acquire", _ACQUIRE_LUA), ("adjust", _ADJUST_LUA),
                                ("pause", _PAUSE_LUA)):
                self._scripts[key] = self._client.register_script(source)
        return self._scripts[name]

    @staticmethod
    def keys(model: str) -> tuple[str, str, str]:
        """The request bucket, token bucket and pause keys of `model`."""
        return (f"{KEY_PREFIX}:req:{model}", f"{KEY_PREFIX}:tok:{model}",
                f"{KEY_PREFIX}:pause:{model}")

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script, or return None when Redis is unreachable (fail open)."""
        from redis.exceptions import RedisError  # lazy, as redis.asyncio in _script

        if time.monotonic() < self._down_until:
            return None
        try:
            result = await self._script(name)(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + REDIS_RETRY_S
            if self.url not in self._warned:
                self._warned.add(self.url)
                log.warning("rate limiter: Redis is unreachable (%s: %s); model calls go "
                            "unthrottled until it is back", type(exc).__name__, exc)
            return None
        if self.url in self._warned:
            self._warned.discard(self.url)
            log.warning("rate limiter: Redis is reachable again; limits apply")
        return result

    async def acquire(self, model: str, est_tokens: float = 0.0,
                      prompt_tokens: float = 0.0) -> Ticket | None:
        if model not in self.buckets:
            return None
        gate = self._gates.setdefault(model, asyncio.Lock())
        async with gate:
            return await super().acquire(model, est_tokens, prompt_tokens)

    async def _try(self, model: str, buckets: ModelBuckets, cost: float) -> float | None:
        args = [buckets.requests.increment_ms, buckets.requests.capacity_ms,
                buckets.tokens.increment_ms, buckets.tokens.capacity_ms, cost]
        result = await self._call("acquire", list(self.keys(model)), args)
        return None if result is None else float(result)

    async def _adjust(self, model: str, delta_ms: float) -> None:
        await self._call("adjust", [self.keys(model)[1]], [delta_ms])

    async def _pause(self, model: str, ms: int) -> None:
        await self._call("pause", [self.keys(model)[2]], [ms])

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


_lock = threading.Lock()
_local: dict[tuple[tuple[str, Limit], ...], LocalRateLimiter] = {}
# Redis clients belong to one event loop. Not a WeakKeyDictionary: a limiter refers to
# its loop (through its client and locks), so entries of closed loops are dropped instead.
_per_loop: dict[asyncio.AbstractEventLoop, dict[tuple[Any, ...], RedisRateLimiter]] = {}


def limiter_for(settings: Settings) -> RateLimiter:
    """This deployment's limiter for the running event loop: Redis at `redis_url(settings)`
    (EVALQ_CACHE_URL, else a Redis broker), else, in embedded mode, the process-wide
    in-process limiter. Distributed without Redis: RedisRequired when limits are set."""
    limits = parse_limits(settings.rate_limits)
    frozen = tuple(sorted(limits.items()))
    url = redis_url(settings)
    if url is None:
        require_shared_rate_limits(settings)
    with _lock:
        if url is None:
            local = _local.get(frozen)
            if local is None:
                local = _local[frozen] = LocalRateLimiter(limits)
            return local
        for closed in [loop for loop in _per_loop if loop.is_closed()]:
            del _per_loop[closed]
        mine = _per_loop.setdefault(asyncio.get_running_loop(), {})
        limiter = mine.get((url, frozen))
        if limiter is None:
            limiter = mine[(url, frozen)] = RedisRateLimiter(url, limits)
        return limiter
