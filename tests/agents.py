"""Small deterministic agents used as callable targets (`--target tests.agents:NAME`)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

_CITY = re.compile(r"weather in ([A-Z][a-z]+)")
_TEMPS = {"London": 12, "Paris": 15, "Tokyo": 18}


def weather_agent(query: str, case: dict[str, Any] | None = None) -> dict[str, Any]:
    """Looks up the weather for a city named in the query, with a `weather` tool call.
    Fails (status FAILED) for cities it does not know; refuses to convert currencies."""
    steps: list[dict[str, Any]] = [{"step": "plan", "task": f"answer: {query}"}]
    match = _CITY.search(query)
    if "currency" in query.lower():
        return {"output": "I can only answer weather questions.", "status": "COMPLETE",
                "steps": steps, "tool_calls": []}
    if match is None:
        raise ValueError(f"no city in query {query!r}")
    city = match.group(1)
    call = {"name": "weather", "arguments": {"city": city}}
    steps.append({"step": "tool", "tool_id": "weather", "args": {"city": city}})
    if city not in _TEMPS:
        return {"output": None, "status": "FAILED", "steps": steps, "tool_calls": [call]}
    steps.append({"step": "answer"})
    return {"output": f"It is {_TEMPS[city]} degrees in {city}.", "status": "COMPLETE",
            "steps": steps, "tool_calls": [call], "cost_usd": 0.001}


async def async_upper(text: str) -> str:
    """An async target: the input in capitals."""
    await asyncio.sleep(0.001)
    return text.upper()


def broken(_: Any) -> str:
    """A target that always raises."""
    raise RuntimeError("the agent crashed")


NOT_CALLABLE = 42


def word_budget(sample: Any) -> Any:
    """A custom scorer: the output has at most `max_words` words, a value the test case
    gives in a Steel Thread `custom` assertion."""
    from workers.errors import ScorerError
    from workers.scorers import ScoreValue

    if "max_words" not in sample.custom:
        raise ScorerError("word_budget needs a custom assertion with max_words")
    limit = int(sample.custom["max_words"])
    words = len((sample.output or "").split())
    return ScoreValue(1.0 if words <= limit else 0.0, explanation=f"{words}/{limit} words")
