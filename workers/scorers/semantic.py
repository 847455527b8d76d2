"""Embedding similarity: cosine between the output's and the references' embeddings."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from models.settings import get_settings
from workers.errors import ScorerError
from workers.llm.calls import litellm_ready, redact, retry_policy
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.checks import output_text
from workers.scorers.registry import register_scorer


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0.0 when either is all zeros)."""
    if len(a) != len(b):
        raise ValueError(f"vectors of different lengths: {len(a)} and {len(b)}")
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norm == 0:
        return 0.0
    return max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b, strict=True)) / norm))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _vectors(response: Any, count: int) -> list[list[float]]:
    """The embedding vectors of a litellm EmbeddingResponse, in input order."""
    data = getattr(response, "data", None) or []
    rows = [d if isinstance(d, dict) else getattr(d, "__dict__", {}) for d in data]
    rows = sorted(rows, key=lambda r: r.get("index") or 0)
    vectors = [r.get("embedding") for r in rows]
    if len(vectors) != count or not all(isinstance(v, list) and v for v in vectors):
        raise ScorerError(f"embedding_similarity: expected {count} embeddings in the "
                          f"answer, got {len(vectors)} usable ones")
    return [[float(x) for x in v] for v in vectors]  # type: ignore[union-attr]


def _cost(litellm: Any, response: Any, model: str) -> float:
    hidden = getattr(response, "_hidden_params", None) or {}
    if hidden.get("response_cost") is not None:
        return float(hidden["response_cost"])
    try:
        return float(litellm.completion_cost(completion_response=response, model=model))
    except Exception:  # noqa: BLE001 - litellm raises many types for an unknown price
        return 0.0


@register_scorer("embedding_similarity", version="1", reference_param="value",
                 network=True)
def embedding_similarity(*, value: Any = None, threshold: float = 0.8,
                         model: str | None = None, api_base: str | None = None) -> ScorerFn:
    """Cosine similarity of output and expected (best of a list) embeddings; passes at threshold."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
            -1 <= threshold <= 1):
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold!r}")

    async def score(sample: Sample) -> ScoreValue:
        reference = value if value is not None else sample.expected
        if reference is None:
            raise ScorerError("embedding_similarity: the test case has no \"expected\" and the "
                              "scorer got no value")
        refs = [_text(r) for r in (reference if isinstance(reference, list) else [reference])]
        if not refs or not all(r.strip() for r in refs):
            raise ScorerError("embedding_similarity: a reference text is empty")
        output = output_text(sample, "embedding_similarity")
        settings = get_settings()
        used_model = model or settings.embedding_model
        if not output.strip():
            return ScoreValue(0.0, False, "empty output", judge_model=used_model)
        litellm = await litellm_ready()  # imports litellm on a thread on the first call
        kwargs: dict[str, Any] = {"timeout": settings.request_timeout_s}
        if base := api_base or settings.judge_api_base:
            kwargs["api_base"] = base
        try:
            async for attempt in retry_policy(settings):
                with attempt:
                    started = time.perf_counter()
                    response = await litellm.aembedding(
                        model=used_model, input=[output, *refs], **kwargs)
                    latency_ms = (time.perf_counter() - started) * 1000
        except Exception as exc:  # noqa: BLE001 - a failed call means "could not score"
            raise ScorerError(f"embedding_similarity: {used_model} call failed: "
                              f"{type(exc).__name__}: {redact(str(exc))[:500]}") from exc
        out, *ref_vectors = _vectors(response, len(refs) + 1)
        cosines = [cosine(out, r) for r in ref_vectors]
        best = max(range(len(cosines)), key=cosines.__getitem__)
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "total_tokens", 0) or getattr(usage, "prompt_tokens", 0)
                     or 0)
        explanation = f"cosine {cosines[best]:.3f} (threshold {threshold})" + (
            f" with reference {best + 1} of {len(refs)}" if len(refs) > 1 else "")
        return ScoreValue(
            min(1.0, max(0.0, cosines[best])), cosines[best] >= threshold, explanation,
            {"cosines": [round(c, 6) for c in cosines], "threshold": threshold},
            judge_model=used_model, judge_cost_usd=_cost(litellm, response, used_model),
            judge_tokens=tokens, judge_latency_ms=latency_ms,
        )

    return score
