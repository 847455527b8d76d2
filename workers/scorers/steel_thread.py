"""Assertion types of Portia Steel Thread test cases, scored as Steel Thread scores them,
so such datasets run unchanged and give Steel Thread's numbers.

Steel Thread's evaluator (steelthread.evals.default_evaluator, steel-thread 0.1.12 on
PyPI) gives each assertion a score and no pass/fail; `passed` is ours, and says so:

- `final_output`: `exact_match` compares the raw strings (no case, whitespace or Unicode
  normalisation), `partial_match` is a raw substring test; `llm_judge` asks our
  `llm_correctness` judge against `value`.
- `steel_thread_tool_calls` (a Steel Thread line's `tool_calls`): Steel Thread's
  tool-call score over `calls: {tool: {"called": bool}}`; `calls: {}` scores 1.0.
- `steel_thread_latency` (a Steel Thread line's `latency`): Steel Thread's continuous
  score, 1 - |threshold - latency| / max(threshold, latency); passes within the threshold.
- `llm_as_judge`: an `llm_rubric` judge of the output against the expectation `value`.

A Steel Thread line's `tool_calls` and `latency` are renamed to the two scorers above when
the dataset is read (STEEL_THREAD_TYPES); in a line of our own shape they remain our
`tool_calls` and `latency` scorers. `outcome` is the agent scorer of that name (Steel
Thread compares it case-insensitively too), and `custom` assertions are not scored: their
key/values reach custom scorers as `Sample.custom`.
"""

from __future__ import annotations

from typing import Any

from workers.errors import ScorerError
from workers.scorers.agent import actual_calls, bind_rules, called_text
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.checks import check_number, output_text, reference_texts
from workers.scorers.registry import bind, register_scorer

OUTPUT_TYPES = ("exact_match", "partial_match", "llm_judge")
# A Steel Thread test case's assertion type -> the scorer that scores it as Steel Thread does
STEEL_THREAD_TYPES = {"tool_calls": "steel_thread_tool_calls",
                      "latency": "steel_thread_latency"}


@register_scorer("final_output", version="2", reference_param="value", network=True)
def final_output(
    *, output_type: str = "exact_match", value: Any = None, model: str | None = None,
    api_base: str | None = None,
) -> ScorerFn:
    """Steel Thread: the final output equals `value` (raw strings, nothing normalised),
    contains it (raw substring), or an LLM judge finds it correct against it
    (output_type exact_match / partial_match / llm_judge)."""
    if output_type == "llm_judge":
        return bind("llm_correctness", {"value": value, "model": model, "api_base": api_base},
                    "final_output").fn
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, "
                         f"got {output_type!r}")
    exact = output_type == "exact_match"

    def score(sample: Sample) -> ScoreValue:
        out = output_text(sample, "final_output")
        refs = reference_texts(value, sample, "final_output")
        hit = next((r for r in refs if (out == r if exact else r in out)), None)
        how = "equals" if exact else "contains"
        if hit is not None:
            return ScoreValue(1.0, True, f"output {how} {hit[:80]!r}")
        shown = " or ".join(repr(r[:80]) for r in refs[:3])
        return ScoreValue(0.0, False, f"output {out[:80]!r} does not {how.rstrip('s')} "
                          f"{shown} (raw strings: case and whitespace count)")

    return score


@register_scorer("llm_as_judge", version="1", network=True)
def llm_as_judge(*, value: str, model: str | None = None, api_base: str | None = None
                 ) -> ScorerFn:
    """Steel Thread: an LLM judge rates how well the output meets the expectation `value`
    (a rubric on a 1-5 scale, passing at 4 or more)."""
    criteria = f"The response meets this expectation: {value}"
    return bind("llm_rubric", {"criteria": criteria, "pass_threshold": 0.75, "model": model,
                               "api_base": api_base}, "llm_as_judge").fn


@register_scorer("steel_thread_tool_calls", version="1")
def steel_thread_tool_calls(*, calls: dict[str, Any]) -> ScorerFn:
    """Steel Thread's tool_calls score: with R tools that must be called (called: true),
    the fraction of them called, where a called must-not tool (called: false) also counts
    towards R, capped at 1; with none that must be called, 1.0 when no must-not tool was
    called, else 0.0 (so calls: {} scores 1.0). Passes only when every must-be-called
    tool was called and no must-not tool was."""
    rules = bind_rules(calls, allow_empty=True)
    required = [want for want, called in rules if called]
    forbidden = [want for want, called in rules if not called]

    def score(sample: Sample) -> ScoreValue:
        made = actual_calls(sample)
        missing = [w.name for w in required if not any(w.matches(c) for c in made)]
        used = [w.name for w in forbidden if any(w.matches(c) for c in made)]
        hits = len(required) - len(missing) + len(used)  # Steel Thread's "actual calls"
        if required:
            value = min(hits / len(required), 1.0)
        else:
            value = 0.0 if used else 1.0
        parts = [f"{len(required) - len(missing)} of {len(required)} required tools called"
                 if required else "no tool required"]
        if missing:
            parts.append(f"not called: {', '.join(missing)}")
        if used:
            parts.append(f"must not be called but was: {', '.join(used)}"
                         + (" (Steel Thread's score counts it as a call made)"
                            if required else ""))
        names = [c.name for c in made]
        return ScoreValue(value, not missing and not used,
                          f"score {value:.3g}: {'; '.join(parts)}; {called_text(names)}",
                          {"missing": missing, "forbidden_called": used, "called": names})

    return score


@register_scorer("steel_thread_latency", version="1")
def steel_thread_latency(*, threshold_ms: float) -> ScorerFn:
    """Steel Thread's latency score, 1 - |threshold - latency| / max(threshold, latency):
    1.0 at the threshold, lower both above it and below it (a run at a tenth of the
    threshold scores 0.1). Passes when the latency is within the threshold."""
    limit = check_number("threshold_ms", threshold_ms)

    def score(sample: Sample) -> ScoreValue:
        if sample.latency_ms is None:
            raise ScorerError("latency: the target's latency was not recorded")
        actual = sample.latency_ms
        value = min(1.0, max(0.0, 1 - abs(limit - actual) / max(limit, actual, 1e-8)))
        ok = actual <= limit
        return ScoreValue(value, ok, f"latency {actual:.0f} ms {'<=' if ok else '>'} "
                          f"{limit:g} ms; Steel Thread's score {value:.3g} (closeness to the "
                          "threshold)", {"latency_ms": actual, "threshold_ms": limit})

    return score
