"""Which Redis the shared rate limiter and the response cache use, whatever the broker.

The broker (EVALQ_BROKER_URL) moves tasks; it is Redis or RabbitMQ. The rate limiter
(workers.llm.ratelimit) and the response cache (workers.llm.cache) need Redis itself, not a
broker: `redis_url` picks it, one rule for both:

- EVALQ_CACHE_URL when set (it must be a Redis URL);
- else the broker, when the broker is Redis;
- else None: the response cache falls back to the database (as in embedded mode), and
  the rate limiter to an in-process one, which is only allowed without a broker
  (one process). A distributed deployment with EVALQ_RATE_LIMITS and no Redis is
  refused (`workers.llm.ratelimit.require_shared_rate_limits`) rather than limited per
  process, which would multiply every limit by the number of workers.

A worker checks this at start-up (workers.celery_app's `worker_init` hook) and exits
with the message; `evalq run` checks it before writing anything.
"""

from __future__ import annotations

import logging

from models.settings import Settings
from workers.errors import WorkerError

log = logging.getLogger(__name__)

__all__ = ["REDIS_SCHEMES", "RedisRequired", "is_redis", "redis_url", "url_scheme"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisRequired(WorkerError):
    """The configuration needs a Redis URL it does not have (shared rate limits with a
    RabbitMQ broker and no EVALQ_CACHE_URL), or EVALQ_CACHE_URL is not a Redis URL."""


def is_redis(url: str | None) -> bool:
    """Whether `url` points at Redis (redis://, rediss:// or unix://)."""
    return bool(url) and str(url).startswith(REDIS_SCHEMES)


def url_scheme(url: str) -> str:
    """The scheme of a URL, for messages: never the credentials in the rest of it."""
    return url.split("://", 1)[0] + "://" if "://" in url else "(no scheme)"


def redis_url(settings: Settings) -> str | None:
    """The Redis of the rate limiter and the response cache: EVALQ_CACHE_URL, else a
    Redis broker, else None. An EVALQ_CACHE_URL that is not Redis raises RedisRequired."""
    if settings.cache_url:
        if not is_redis(settings.cache_url):
            raise RedisRequired(
                f"EVALQ_CACHE_URL must be a Redis URL (redis://, rediss:// or unix://), got "
                f"a {url_scheme(settings.cache_url)} URL; it is the Redis of the response cache "
                "and the shared rate limiter, e.g. EVALQ_CACHE_URL=redis://host:6379/1"
            )
        return settings.cache_url
    if is_redis(settings.broker_url):
        return settings.broker_url
    return None
