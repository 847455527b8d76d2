"""One settings object for every layer: environment variables with the EVALQ_ prefix.

Provider API keys are deliberately *not* settings: litellm reads them from the
environment itself (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...), so they never pass
through task arguments, the database or logs.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///evalq.db"


class Settings(BaseSettings):
    """Runtime configuration, read from the environment (prefix EVALQ_) and `.env`."""

    model_config = SettingsConfigDict(env_prefix="EVALQ_", env_file=".env", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the results database: sqlite:///path.db (embedded "
        "default) or postgresql+psycopg://user@host/db (distributed).",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker: redis://host:6379/0 or amqp://user:pass@host:5672/vhost "
        "(RabbitMQ). Unset: embedded mode, tasks run in-process on a thread pool.",
    )
    default_model: str = Field(
        "evalq/toy",
        description="Model used when a run names none (a litellm model name). The default is "
        "the built-in offline toy model, which needs no key and no network.",
    )
    concurrency: int = Field(
        50, ge=1, le=1024, description="Embedded mode: items evaluated at once (model calls in "
        "flight). 50 keeps a provider's usual 0.5-2 s latency from being the bottleneck "
        "(25-100 calls/s); a 429 is retried after its Retry-After, and EVALQ_RATE_LIMITS caps "
        "a low tier."
    )
    model_concurrency: int = Field(
        32, ge=1, le=4096, description="Worker process: target calls in flight at once "
        "(total concurrency = worker processes x this)."
    )
    chunk_size: int = Field(
        16, ge=1, le=500, description="(item, repeat)s per task. 1 = one task per item."
    )
    max_attempts: int = Field(
        6, ge=1, le=50, description="Model call attempts per item (first try included)."
    )
    fail_fast_after: int = Field(
        10, ge=0, le=10000, description="Stop an experiment (status failed, no more model "
        "calls) when its first this-many results all failed the same permanent way (missing "
        "or refused key, unknown model, the same bad request) and none succeeded. 0: never."
    )
    retry_initial_s: float = Field(
        0.5, ge=0, description="First backoff of a retried model call, in seconds."
    )
    retry_max_s: float = Field(
        30.0, ge=0, description="Longest single backoff (also caps a Retry-After header)."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Timeout of one model HTTP request, in seconds."
    )
    visibility_timeout_s: int = Field(
        3600,
        ge=5,
        description="Redis visibility timeout: a task not acknowledged this long after it was "
        "delivered (its worker died) is delivered again. Keep it above the longest task.",
    )
    heartbeat_s: float = Field(
        2.0, gt=0, le=60, description="How often a worker writes its heartbeat to the database "
        "and sweeps for lost work (tasks of dead workers, messages a broker lost)."
    )
    worker_dead_after_s: float = Field(
        15.0, ge=3, le=3600, description="A worker whose heartbeat is older than this is dead: "
        "the tasks it held are enqueued again. Recovery after a crash takes about this long."
    )
    max_task_attempts: int = Field(
        5, ge=1, le=100, description="Deliveries of one task whose worker died before it "
        "finished (crash, OOM, kill); after that its items are stored as errors."
    )
    rate_limits: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Shared rate limits per model, JSON: {"openai/gpt-4o-mini": {"rpm": 600, '
        '"tpm": 200000}}. Enforced across every worker process through Redis.',
    )
    soft_shutdown_s: float = Field(
        30.0, ge=0, description="Celery's soft-shutdown window on a cold shutdown (SIGQUIT). "
        "SIGTERM is a warm shutdown: the worker takes no new task and finishes the running ones."
    )
    poll_interval_s: float = Field(
        0.5, gt=0, description="How often `wait_for_experiment` reads progress."
    )
    judge_model: str = Field(
        "openai/gpt-4o-mini",
        description="Default model of the LLM-judge scorers (a scorer's `model` parameter "
        "overrides it).",
    )
    judge_api_base: str | None = Field(
        None, description="Default base URL for judge and embedding calls (OpenAI-compatible)."
    )
    embedding_model: str = Field(
        "openai/text-embedding-3-small",
        description="Default model of the embedding_similarity scorer.",
    )
    target_timeout_s: float = Field(
        600.0, gt=0, description="Longest a Python callable target may take on one test case."
    )
    scorer_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Longest one scorer may take on one sample before it "
        "is 'could not score' (regular expressions stop by themselves at this limit). Scorers "
        "that call a model (judges, embeddings) get EVALQ_REQUEST_TIMEOUT_S x "
        "EVALQ_MAX_ATTEMPTS instead, if that is longer."
    )
    ingest_token: SecretStr | None = Field(
        None,
        description="Bearer token that `evalq serve` requires on POST /runs (the server "
        "refuses to start without one).",
    )
    ingest_max_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, description="Largest accepted POST /runs body, in bytes."
    )
    ingest_max_batch: int = Field(
        1000, ge=1, description="Most runs accepted in one POST /runs."
    )
    ingest_max_connections: int = Field(
        200, ge=2, le=100_000, description="`evalq serve`: connections and requests at once; "
        "a request beyond it is answered 503 (uvicorn's limit_concurrency)."
    )
    ingest_header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="`evalq serve`: a connection that has not sent a "
        "complete request head this long after connecting (or after its previous response) "
        "is closed."
    )
    ingest_keep_alive_s: int = Field(
        5, ge=1, le=3600, description="`evalq serve`: an idle keep-alive connection is closed "
        "after this long (uvicorn's timeout_keep_alive)."
    )
    ingest_body_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="`evalq serve`: the whole POST /runs body must arrive "
        "within this long after its head (408 otherwise)."
    )
    ingest_url: str | None = Field(
        None, description="record_run sends to `evalq serve` at this base URL (with "
        "EVALQ_INGEST_TOKEN) instead of writing to the database.")
    record_buffer: int = Field(
        10_000, ge=1, description="record_run: runs held in memory at most; more are "
        "dropped and counted (sender.stats()['dropped']).")
    record_batch: int = Field(
        500, ge=1, le=1000, description="record_run: runs per background write or POST.")
    record_flush_interval_s: float = Field(
        0.5, gt=0, description="record_run: the background sender writes at least this often.")
    record_exit_timeout_s: float = Field(
        5.0, ge=0, description="record_run: how long the flush at interpreter exit may take.")
    tick_interval_s: float = Field(
        5.0, gt=0, description="How often beat runs the online tick (each evaluator still "
        "runs at its own --every)."
    )
    ingest_settle_s: float = Field(
        2.0, ge=0, description="The online tick leaves runs ingested less than this long ago "
        "for the next tick (so concurrent inserts cannot be skipped)."
    )
    claim_timeout_s: int = Field(
        600, ge=10, description="A claimed online run not scored after this long is "
        "claimed again (its worker crashed)."
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="Total deadline of one alert webhook POST (connect, send, "
        "answer), not per read.")
    drift_min_n: int = Field(
        10, ge=1, le=1_000_000, description="Online reports: a window (and the baseline) "
        "needs at least this many scored runs for drift to be tested; below it the window's "
        "drift is null (too few)."
    )
    alert_min_n: int = Field(
        10, ge=1, le=1_000_000, description="Online alerts: a window fires only once it "
        "holds at least this many scored runs (a mean of a few runs is mostly noise)."
    )
    cache_url: str | None = Field(
        None, description="Redis URL of the response cache and of the shared rate limiter "
        "(default: the broker when it is Redis). Required for EVALQ_RATE_LIMITS with a RabbitMQ "
        "broker; without any Redis the response cache is kept in the database."
    )
    cache_ttl_s: int = Field(
        7 * 86400, ge=60, description="How long a cached model response is kept (Redis)."
    )
    max_repeats: int = Field(100, ge=1, description="Upper bound for --repeats.")
    max_line_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Longest accepted dataset line, in bytes."
    )
    datasets_dir: str | None = Field(
        None,
        description="Where `evalq run NAME` looks for NAME.jsonl (default: the shipped "
        "datasets/ folder).",
    )
    log_level: str = Field(
        "WARNING", description="Log level of the evalq CLI (workers take celery's --loglevel)."
    )

    @field_validator("broker_url")
    @classmethod
    def _empty_broker_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: tasks run in this process."""
        return self.broker_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, created once."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (after the environment changed, e.g. in a CLI option)."""
    get_settings.cache_clear()
