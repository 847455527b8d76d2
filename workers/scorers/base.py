"""What a scorer sees (Sample) and what it returns (ScoreValue)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One test case together with what the target produced for it."""

    input: Any
    expected: Any
    output: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Tool calls the target made: [{"name": str, "arguments": dict | str, "id": str}].
    tool_calls: list[dict[str, Any]] | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    # An agent's final state ("COMPLETE", "FAILED"...); "COMPLETE" for a model that answered.
    outcome: str | None = None
    # An agent's steps (plan steps or trace), as the target reported them.
    steps: list[Any] | None = None
    # Key/values of the test case's `custom` assertions, for custom scorers.
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreValue:
    """A scorer's verdict: value in [0, 1], whether it passed, and why."""

    value: float
    passed: bool | None = None
    explanation: str | None = None
    metadata: dict[str, Any] | None = None
    judge_model: str | None = None
    judge_cost_usd: float = 0.0
    judge_tokens: int = 0
    judge_latency_ms: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a score value must be in [0, 1], got {self.value}")
        if self.passed is None:
            self.passed = self.value >= 1.0


ScorerFn = Callable[[Sample], "ScoreValue | Awaitable[ScoreValue]"]
