"""Model calls through litellm, with one tenacity retry policy and a shared rate limit.

litellm's own retries are off; we retry only what may succeed next time (rate
limits, timeouts, connection errors, 5xx), honour Retry-After, and fail fast on
everything else (bad request, auth, not found, context window). Permanent errors are
recognised by status code and, for a missing key, by message: litellm reports the
OpenAI client's "Missing credentials" as a 500 InternalServerError.

Every attempt first acquires from the model's shared rate limit (workers.llm.ratelimit);
a 429 with Retry-After pauses the model for every worker before tenacity sleeps.

A stored error never holds a credential (workers.runtime.logsafe): the values of secret-looking
environment variables, every header value the call sent, `Bearer`/`Basic` credentials and
URL passwords are masked. A header value `env:NAME` is read from this process's
environment at call time. Importing this module scrubs the HTTP libraries' log records.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from models.settings import Settings
from models.tables import TargetOutput
from workers.llm.ratelimit import RateLimiter, estimate_tokens, limiter_for
from workers.llm.toy_model import make_handler
from workers.runtime.logsafe import (
    ENV_REFERENCE,
    install_log_filters,
    mask_credentials,
    remember_secret,
)

log = logging.getLogger(__name__)
install_log_filters()  # request URLs and headers out of httpx/openai/litellm log records
_configured = False
# litellm's loggers. litellm gives them a stream handler of its own at DEBUG and no level,
# so under a worker's --loglevel INFO every call wrote "LiteLLM completion() model= ...;
# provider = ..." twice (its handler on stderr, which Celery logs again at WARNING, and
# the root handler): four lines per model call.
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
LITELLM_LOG_ENV = "LITELLM_LOG"  # litellm's own switch: set, litellm logs at that level


def quiet_litellm(litellm: Any, asked: str | None = None) -> None:
    """litellm's own logging and callbacks off unless asked for: its loggers keep warnings
    and errors only (handed to this process's handlers, once), no per-call lines, no
    success/failure callbacks, no copies of messages kept for logging. `asked`: the
    LITELLM_LOG level (DEBUG, INFO, ...) the user set, which is honoured instead."""
    level = logging.getLevelName(asked.strip().upper()) if asked else logging.WARNING
    if not isinstance(level, int):
        level = logging.WARNING
    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in list(logger.handlers):  # records propagate to the app's handlers
            logger.removeHandler(handler)
        logger.propagate = True
    if asked:
        return
    litellm.set_verbose = False
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    litellm.disable_streaming_logging = True
    for name in ("callbacks", "success_callback", "failure_callback", "input_callback",
                 "_async_success_callback", "_async_failure_callback", "service_callback"):
        if isinstance(getattr(litellm, name, None), list):
            setattr(litellm, name, [])


def setup_litellm() -> Any:
    """Import and configure litellm once per process (quiet, see `quiet_litellm`);
    returns the module."""
    global _configured
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # lazy: ~3 s to import; the CLI and reports never call a model

    if not _configured:
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.drop_params = False
        litellm.num_retries = 0
        litellm.custom_provider_map = [{"provider": "evalq", "custom_handler": make_handler()}]
        quiet_litellm(litellm, os.environ.get(LITELLM_LOG_ENV))
        _configured = True
    return litellm


async def litellm_ready() -> Any:
    """`setup_litellm()` for async code: the first import (about 3 s) runs on a thread, not
    on the event loop, where it would stall every target, scorer and model call sharing
    the loop (and a callable target awaited meanwhile would be timed 3 s slower)."""
    if _configured:
        return setup_litellm()
    return await asyncio.to_thread(setup_litellm)


def redact(text: str, values: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with credentials masked: the values of secret-looking environment variables
    (`*_API_KEY`, `*_TOKEN`, ...), the given `values` and those remembered by earlier calls
    (header values sent), `Bearer`/`Basic` credentials and URL userinfo."""
    return mask_credentials(text, values)


def header_values(params: dict[str, Any] | None) -> list[str]:
    """The header values a call with these model parameters sends (`extra_headers`,
    `headers`, `default_headers`, any `*header*` mapping): masked in its stored error."""
    found: list[str] = []
    for name, value in (params or {}).items():
        if "header" in name.lower() and isinstance(value, dict):
            found += [str(v) for v in value.values() if v is not None]
    return found


class HeaderEnvMissing(Exception):
    """A header value is `env:NAME` and NAME is not set in this process's environment."""


def resolve_header_env(params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters with each `env:NAME` header value replaced by the environment
    variable NAME of this process (the worker's): a gateway's credential reaches it without
    entering the experiment row. Raises HeaderEnvMissing when NAME is not set."""
    resolved = dict(params or {})
    for name, value in resolved.items():
        if "header" not in name.lower() or not isinstance(value, dict):
            continue
        headers = dict(value)
        for header, raw in value.items():
            match = ENV_REFERENCE.match(raw) if isinstance(raw, str) else None
            if match is None:
                continue
            found = os.environ.get(match.group(1))
            if not found:
                raise HeaderEnvMissing(
                    f"header {header!r} of model parameter {name!r} takes its value from the "
                    f"environment variable {match.group(1)}, which is not set where the model "
                    "is called (the worker, or the CLI in embedded mode)")
            headers[header] = found
        resolved[name] = headers
    return resolved


# How the provider or litellm says that no key is configured: the OpenAI client's
# "Missing credentials" (which litellm maps to a 500), "Missing Anthropic API Key",
# "client is not initialized. Make sure api_key is passed", "api_key is None"...
_MISSING_KEY = re.compile(
    r"missing credentials|missing \w+ api key|api_key client option must be set"
    r"|make sure api_key is passed|api[_ ]?key (?:is none|not found|is not set)"
    r"|credentials not provided", re.IGNORECASE)
# The error_type recorded for a permanent HTTP status, whatever class litellm raised
# (it raises a bare APIError for a 403, for instance).
_PERMANENT_STATUS = {400: "BadRequestError", 401: "AuthenticationError",
                     402: "PaymentRequiredError", 403: "PermissionDeniedError",
                     404: "NotFoundError", 422: "UnprocessableEntityError"}
_TRANSIENT_STATUS = frozenset({408, 409, 429})  # and every 5xx
# error_types of permanent failures that concern the whole configuration (key, access,
# billing, model), not one request: the same type on an experiment's first results is
# enough to stop it (workers.offline.failfast). Request errors (litellm's BadRequestError and its
# subclasses) must also share their message.
CONFIG_ERRORS = frozenset({"AuthenticationError", "CallerCredentialAuthenticationError",
                           "PermissionDeniedError", "PaymentRequiredError", "NotFoundError"})
REQUEST_ERRORS = frozenset({
    "BadRequestError", "InvalidRequestError", "UnprocessableEntityError",
    "ContextWindowExceededError", "ContentPolicyViolationError", "UnsupportedParamsError",
    "EndpointNotSupportedByModelError", "UnsupportedEndpointError", "LiteLLMUnknownProvider",
    "MalformedRequestFieldError", "RejectedRequestError", "ImageFetchError"})


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def missing_credentials(text: str) -> bool:
    """True when an error message says that no API key is configured."""
    return _MISSING_KEY.search(text) is not None


def permanent_error_type(exc: BaseException) -> str | None:
    """The error_type under which a permanent model error is recorded (it fails the same
    way on every attempt), or None for an error that is not known to be permanent.

    Missing credentials are an AuthenticationError whatever litellm raised; a 4xx other
    than 408, 409 and 429 is permanent, named after its status."""
    litellm = setup_litellm()
    if missing_credentials(str(exc)):
        return "AuthenticationError"
    named = (litellm.BadRequestError, litellm.AuthenticationError, litellm.NotFoundError,
             litellm.PermissionDeniedError, litellm.UnprocessableEntityError)
    if isinstance(exc, named):
        return type(exc).__name__
    status = _status(exc)
    if status is not None and 400 <= status < 500 and status not in _TRANSIENT_STATUS:
        return _PERMANENT_STATUS.get(status, type(exc).__name__)
    return None


def is_retryable(exc: BaseException) -> bool:
    """The one predicate deciding whether a failed model call is worth another try:
    rate limits, timeouts, connection errors and 5xx are; permanent errors (missing or
    invalid key, no access, unknown model, bad request) never are."""
    litellm = setup_litellm()
    if permanent_error_type(exc) is not None:
        return False
    retryable = (
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )
    if isinstance(exc, retryable):
        return True
    status = _status(exc)  # e.g. a bare APIError for a 529 (overloaded)
    return status is not None and (status in _TRANSIENT_STATUS or status >= 500)


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """The Retry-After an error's HTTP response asked for, in seconds, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "litellm_response_headers", None)
    if not headers:
        return None
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            return max(0.0, float(raw) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        when = email.utils.parsedate_to_datetime(raw)
        return max(0.0, when.timestamp() - time.time()) if when else None


def make_wait(settings: Settings) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter, or the server's Retry-After (capped)."""
    # Jitter in proportion to the first backoff (tenacity's default adds up to 1 s to
    # every wait, which at a 0.1 s initial backoff would dominate it).
    backoff = wait_exponential_jitter(initial=settings.retry_initial_s, max=settings.retry_max_s,
                                      jitter=settings.retry_initial_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc)
        if asked is not None:
            return min(asked, settings.retry_max_s)
        return float(backoff(state))

    return wait


def _log_before_sleep(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    sleep = state.next_action.sleep if state.next_action else 0.0
    log.info("model call attempt %d failed (%s); retrying in %.2fs",
             state.attempt_number, type(exc).__name__, sleep)


def retry_policy(settings: Settings) -> AsyncRetrying:
    """The tenacity policy every model call uses."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(settings.max_attempts),
        wait=make_wait(settings),
        before_sleep=_log_before_sleep,
        reraise=True,
    )


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw  # kept as the model sent it
    return raw


def _tool_calls(message: Any) -> list[dict[str, Any]] | None:
    calls = getattr(message, "tool_calls", None)
    if not calls:
        return None
    return [
        {"id": c.id, "name": c.function.name, "arguments": _arguments(c.function.arguments)}
        for c in calls
    ]


_unpriced: set[str] = set()


def _cost(litellm: Any, response: Any, model: str) -> tuple[float, bool]:
    """The call's cost in USD, and whether litellm knows the model's price. litellm has
    usually computed it already (hidden params); a model without a price is remembered so
    the (slow) failed lookup is not repeated on every call."""
    if model.startswith("evalq/"):
        return 0.0, True  # the built-in toy model is free
    known = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    if known is not None:
        return float(known), True
    if model in _unpriced:
        return 0.0, False
    try:
        return float(litellm.completion_cost(completion_response=response, model=model)), True
    except Exception:  # noqa: BLE001 - litellm raises many types for an unknown price
        _unpriced.add(model)
        return 0.0, False


async def _attempt(litellm: Any, limiter: RateLimiter, settings: Settings, *, model: str,
                   messages: list[dict[str, Any]], estimate: tuple[int, int],
                   kwargs: dict[str, Any]) -> tuple[Any, float]:
    """One request: acquire from the rate limit, call, settle the token reservation.
    Returns (response, latency in ms); a 429's Retry-After pauses the model everywhere."""
    ticket = await limiter.acquire(model, estimate[1], estimate[0])
    started = time.perf_counter()
    try:
        response = await litellm.acompletion(model=model, messages=messages, num_retries=0,
                                             **kwargs)
    except Exception as exc:
        asked = retry_after_seconds(exc)
        if asked and isinstance(exc, litellm.RateLimitError):  # first: others are calling
            await limiter.pause(model, min(asked, settings.retry_max_s))
        await limiter.release(ticket)
        raise
    latency_ms = (time.perf_counter() - started) * 1000
    if ticket is not None:
        usage = getattr(response, "usage", None)
        used = int(getattr(usage, "prompt_tokens", 0) or 0) + int(
            getattr(usage, "completion_tokens", 0) or 0)
        await limiter.record_usage(ticket, used or ticket.tokens)
    return response, latency_ms


async def call_model(
    *,
    model: str,
    messages: list[dict[str, Any]],
    settings: Settings,
    api_base: str | None = None,
    params: dict[str, Any] | None = None,
) -> TargetOutput:
    """Call the model with retries; never raises for a model error (it is recorded)."""
    litellm = await litellm_ready()
    outcome = TargetOutput()
    try:
        params = resolve_header_env(params)
    except HeaderEnvMissing as exc:
        outcome.error, outcome.error_type = str(exc), "AuthenticationError"
        return outcome
    kwargs: dict[str, Any] = {"timeout": settings.request_timeout_s, **params}
    if api_base:
        kwargs["api_base"] = api_base
    sent = header_values(params)
    for value in sent:
        remember_secret(value)  # also masked in the HTTP libraries' debug log records
    try:
        limiter = limiter_for(settings)
        limited = limiter.limited(model)
        prompt_est, total_est = estimate_tokens(messages, params) if limited else (0, 0)
        async for attempt in retry_policy(settings):
            with attempt:
                outcome.attempts = attempt.retry_state.attempt_number
                response, outcome.latency_ms = await _attempt(
                    litellm, limiter, settings, model=model, messages=messages,
                    estimate=(prompt_est, total_est), kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001 - every model failure becomes a Result error
        outcome.error = redact(str(exc), sent)[:4000] or type(exc).__name__
        outcome.error_type = permanent_error_type(exc) or type(exc).__name__
        return outcome
    message = response.choices[0].message
    usage = getattr(response, "usage", None)
    outcome.output = message.content
    outcome.tool_calls = _tool_calls(message)
    outcome.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    outcome.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    outcome.cost_usd, outcome.cost_known = _cost(litellm, response, model)
    outcome.response_model = getattr(response, "model", None)
    outcome.outcome = "COMPLETE"
    return outcome
