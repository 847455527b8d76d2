"""Assertion types of Portia Steel Thread test cases, so such datasets run unchanged.

`outcome`, `tool_calls` ({tool: {called: bool}}) and `latency` (threshold_ms) are the
agent and text scorers of the same names; this module adds `final_output` and
`llm_as_judge`. `custom` assertions are not scored: their key/values reach custom
scorers as `Sample.custom`.
"""

from __future__ import annotations

from typing import Any

from workers.scorers.base import ScorerFn
from workers.scorers.registry import bind, register_scorer

OUTPUT_TYPES = ("exact_match", "partial_match", "llm_judge")


@register_scorer("final_output", version="1", reference_param="value", network=True)
def final_output(
    *, output_type: str = "exact_match", value: Any = None, model: str | None = None,
    api_base: str | None = None,
) -> ScorerFn:
    """Steel Thread: the final output equals `value`, contains it, or an LLM judge finds it
    correct against it (output_type exact_match / partial_match / llm_judge)."""
    if output_type == "exact_match":
        inner = bind("exact_match", {"value": value, "ignore_case": False}, "final_output")
    elif output_type == "partial_match":
        inner = bind("contains", {"value": value, "ignore_case": False}, "final_output")
    elif output_type == "llm_judge":
        inner = bind("llm_correctness", {"value": value, "model": model, "api_base": api_base},
                     "final_output")
    else:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, "
                         f"got {output_type!r}")
    return inner.fn


@register_scorer("llm_as_judge", version="1", network=True)
def llm_as_judge(*, value: str, model: str | None = None, api_base: str | None = None
                 ) -> ScorerFn:
    """Steel Thread: an LLM judge rates how well the output meets the expectation `value`
    (a rubric on a 1-5 scale, passing at 4 or more)."""
    criteria = f"The response meets this expectation: {value}"
    return bind("llm_rubric", {"criteria": criteria, "pass_threshold": 0.75, "model": model,
                               "api_base": api_base}, "llm_as_judge").fn
