"""Checks of what a user asks for, before anything is written: shared by offline runs
(`evalq run`, rescore, compare) and online evaluators. Each raises InputError saying what
is wrong and what to do instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from models.settings import Settings
from scheduler.errors import InputError
from workers.errors import WorkerError
from workers.llm.calls import setup_litellm
from workers.llm.ratelimit import require_shared_rate_limits
from workers.llm.redis_url import RedisRequired
from workers.offline.targets import load_callable
from workers.runtime.logsafe import secret_param, strip_url, url_secret
from workers.scorers import ResolvedScorer, resolve_scorers


def resolve_scorer_specs(specs: Sequence[str | dict[str, Any]]) -> list[ResolvedScorer]:
    """Scorer specs (names, or {"type", ...params}) bound to their scorers."""
    try:
        return resolve_scorers(list(specs))
    except WorkerError as exc:
        raise InputError(str(exc)) from None


def check_params(model_params: dict[str, Any] | None) -> dict[str, Any]:
    """The model parameters, refused if one carries a credential: a secret-looking name
    (api_key, access_token; not max_tokens), a header mapping (extra_headers, headers,
    default_headers, ...) with an Authorization, *api-key*, *token*, *secret* or cookie
    header, or a value shaped like one (Bearer/Basic, sk-...). They are stored."""
    params = dict(model_params or {})
    for key, value in params.items():
        why = secret_param(str(key), value)
        if why is not None:
            raise InputError(
                f"model parameter {key!r} looks like a secret ({why}): parameters are stored "
                "with the experiment and shown in reports; keep keys in the environment: the "
                "provider's key as e.g. OPENAI_API_KEY (litellm sends it), a gateway's header "
                "as a reference to a variable, e.g. --param 'extra_headers={\"Authorization\": "
                "\"env:GATEWAY_AUTH\"}' with GATEWAY_AUTH set where the model is called"
            )
    try:
        json.dumps(params)
    except TypeError as exc:
        raise InputError(f"model parameters must be JSON values: {exc}") from None
    return params


def check_api_base(api_base: str | None) -> None:
    """An API base URL is stored and shown: refused when it carries a credential."""
    if api_base is None or (why := url_secret(api_base)) is None:
        return
    raise InputError(
        f"the API base URL {strip_url(api_base)} (--api-base) is refused: {why}, and "
        "it is stored with the experiment and shown in reports; give it without the "
        "credential and keep the credential in the environment: the provider's key as "
        "e.g. OPENAI_API_KEY (sent as a Bearer token), a gateway's header as "
        "--param 'extra_headers={\"Authorization\": \"env:GATEWAY_AUTH\"}' with "
        "GATEWAY_AUTH set where the model is called"
    )


def check_model(model: str, api_base: str | None) -> None:
    """Refuse a model name litellm cannot route, before anything is written. Imports
    litellm (~3 s): embedded runs only; in distributed mode the first worker finds an
    unknown model (workers.offline.failfast stops the experiment with litellm's reason)."""
    if model.startswith("evalq/"):
        return
    litellm = setup_litellm()
    try:
        litellm.get_llm_provider(model=model, api_base=api_base)
    except Exception as exc:  # noqa: BLE001 - litellm raises several types for this
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc)
        raise InputError(
            f"unknown model {model!r}: litellm cannot tell its provider ({reason}); name it "
            "provider/model, e.g. openai/gpt-4o-mini or anthropic/claude-3-5-haiku-latest"
        ) from None


def check_shared_services(settings: Settings) -> None:
    """Rate limits shared through Redis need a Redis (EVALQ_CACHE_URL with RabbitMQ)."""
    try:
        require_shared_rate_limits(settings)
    except RedisRequired as exc:
        raise InputError(str(exc)) from None


def check_target(target: str | None, prompt: str | None) -> None:
    """A callable target ("package.module:function") must import; it takes no template."""
    if target is None:
        return
    if prompt is not None:
        raise InputError("a prompt template applies to model targets only, not to --target")
    try:
        load_callable(target)
    except WorkerError as exc:
        raise InputError(str(exc)) from None
