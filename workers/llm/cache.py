"""Response cache: a model call with the same model, messages, parameters and repeat index
returns the stored response instead of calling the provider again.

Where: in Redis, with a TTL, when there is one (`workers.llm.redis_url.redis_url`:
EVALQ_CACHE_URL, else the broker when it is Redis); otherwise in the database (table
response_cache, no expiry): embedded mode, and a RabbitMQ broker without EVALQ_CACHE_URL,
where the workers share the cache through PostgreSQL. Only successful responses are
stored. "auto" caches temperature-0 calls only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Protocol

from models.crud import dialect_insert
from models.db import session_scope
from models.settings import Settings
from models.tables import ResponseCache, utcnow
from workers.llm.redis_url import redis_url

MODES = ("auto", "on", "off")
_clients: dict[str, Any] = {}
_lock = threading.Lock()


def cache_enabled(mode: str, params: dict[str, Any]) -> bool:
    """Whether calls of an experiment with this cache mode and parameters use the cache."""
    if mode == "on":
        return True
    return mode == "auto" and params.get("temperature") == 0


def cache_key(*, model: str, api_base: str | None, messages: list[dict[str, Any]],
              params: dict[str, Any], repeat: int) -> str:
    """sha256 of everything that makes two calls the same call."""
    blob = json.dumps({"model": model, "api_base": api_base, "messages": messages,
                       "params": params, "repeat": repeat},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Store(Protocol):
    """Where cached responses live."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class RedisStore:
    """Cache entries as Redis strings with a TTL."""

    def __init__(self, url: str, ttl_s: int) -> None:
        import redis  # lazy: ~130 ms to import; only a deployment with a Redis needs it

        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(url)
        self.client, self.ttl_s = client, ttl_s

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(f"evalq:cache:{key}")
        return json.loads(raw) if raw else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.client.set(f"evalq:cache:{key}", json.dumps(value), ex=self.ttl_s)


class DatabaseStore:
    """Cache entries in the response_cache table (no Redis configured)."""

    def get(self, key: str) -> dict[str, Any] | None:
        with session_scope() as session:
            row = session.get(ResponseCache, key)
            return dict(row.value) if row is not None and row.value else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with session_scope() as session:
            session.execute(dialect_insert(session, ResponseCache)
                            .values(key=key, value=value, created_at=utcnow())
                            .on_conflict_do_nothing(index_elements=["key"]))


def store_for(settings: Settings) -> Store:
    """The cache of this deployment: Redis when one is configured, else the database."""
    url = redis_url(settings)
    return RedisStore(url, settings.cache_ttl_s) if url else DatabaseStore()
