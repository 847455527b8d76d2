"""`evalq/toy`: a tiny deterministic model served through litellm's custom-provider hook.

It lets the demo and a first run work with no API key and no network. It does
arithmetic correctly, knows a handful of facts (and gets a few famously wrong),
and says "I don't know" otherwise, so a demo report has non-trivial scores.
"""

from __future__ import annotations

import asyncio
import operator
import re
import time
from typing import Any

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "x": operator.mul,
        "times": operator.mul, "plus": operator.add, "minus": operator.sub}
_ARITH = re.compile(r"(-?\d+)\s*(\+|-|\*|x|times|plus|minus)\s*(-?\d+)", re.IGNORECASE)
_FACTS = {
    "capital of france": "Paris",
    "capital of japan": "Tokyo",
    "capital of italy": "Rome",
    "capital of germany": "Berlin",
    "capital of australia": "Sydney",  # a classic wrong answer, on purpose
    "capital of canada": "Toronto",  # likewise
    "largest planet": "Jupiter",
    "boiling point of water": "100 degrees Celsius",
    "author of hamlet": "William Shakespeare",
    "chemical symbol for gold": "Au",
    "hello in french": "Bonjour",
    "thank you in french": "Merci",
    "cat in spanish": "Gato",
}


def answer(prompt: str) -> str:
    """The toy model's reply to a prompt (the last user message)."""
    text = prompt.lower()
    match = _ARITH.search(text)
    if match:
        left, op, right = match.groups()
        return str(_OPS[op.lower()](int(left), int(right)))
    for key, reply in _FACTS.items():
        if key in text:
            return reply
    if "json" in text:
        return '{"answer": "unknown"'  # truncated JSON: the toy model is not perfect
    return "I don't know."


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _response(model: str, messages: list[dict[str, Any]]) -> Any:
    import litellm  # lazy: litellm takes ~3 s to import; only model calls need it

    prompt = _last_user_text(messages)
    reply = answer(prompt)
    resp = litellm.ModelResponse(model=model)
    resp.choices[0].message.content = reply  # type: ignore[union-attr]
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages) or 1
    completion_tokens = len(reply.split()) or 1
    resp.usage = litellm.Usage(  # type: ignore[attr-defined]
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return resp


def make_handler() -> Any:
    """A litellm CustomLLM instance serving the `evalq/` provider."""
    from litellm import CustomLLM  # lazy: litellm takes ~3 s to import

    class ToyLLM(CustomLLM):
        latency_s = 0.002

        def completion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            time.sleep(self.latency_s)
            return _response(model, messages)

        async def acompletion(self, model: str, messages: list, *args: Any, **kw: Any) -> Any:
            await asyncio.sleep(self.latency_s)
            return _response(model, messages)

    return ToyLLM()
