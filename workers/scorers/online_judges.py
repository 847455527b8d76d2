"""Default online judges for agent runs: what teams ask of production plans and plan runs.

Each is an `llm_rubric` judge (1-5 scale, passing at 4) that sees the run's query, its
plan (steps with their tools), the plan run's state, step outputs and final output.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.registry import bind, register_scorer

CRITERIA = {
    "plan_run_success": (
        "The agent achieved what the query asked for: the plan run ended in a successful "
        "state and its final output answers the query completely and correctly."
    ),
    "plan_run_efficiency": (
        "The agent reached its result without wasted work: no redundant, repeated or "
        "irrelevant steps or tool calls, and no unnecessary detours."
    ),
    "plan_correctness": (
        "The plan is a correct way to answer the query: its steps use appropriate tools "
        "with sensible inputs, in a valid order, and would produce the right answer."
    ),
    "plan_completeness": (
        "The plan covers everything the query needs: no required step, input or piece of "
        "information is missing."
    ),
    "plan_clarity": (
        "Every step of the plan is clear and unambiguous: its task says what to do, which "
        "tool to use and what it produces."
    ),
}


def describe_run(sample: Sample) -> str:
    """The agent run as the judge reads it (plan, steps, state, final output)."""
    parts: dict[str, Any] = {
        "plan": sample.metadata.get("plan"),
        "steps": sample.steps,
        "tool_calls": sample.tool_calls,
        "state": sample.outcome,
        "final_output": sample.output,
    }
    return json.dumps({k: v for k, v in parts.items() if v is not None}, ensure_ascii=False,
                      default=str, indent=1)


def _preset(name: str) -> None:
    def factory(*, model: str | None = None, api_base: str | None = None,
                pass_threshold: float = 0.75) -> ScorerFn:
        judge = bind("llm_rubric", {"criteria": CRITERIA[name], "model": model,
                                    "api_base": api_base, "pass_threshold": pass_threshold},
                     name).fn

        async def score(sample: Sample) -> ScoreValue:
            verdict = judge(dataclasses.replace(sample, output=describe_run(sample)))
            if not isinstance(verdict, ScoreValue):
                verdict = await verdict
            return verdict

        return score

    factory.__doc__ = f"Online agent judge (llm_rubric, 1-5, passes at 4): {CRITERIA[name]}"
    factory.__name__ = name
    register_scorer(name, version="1", network=True)(factory)


for _name in CRITERIA:
    _preset(_name)
