"""Scorers: named, versioned factories returning callables that score a Sample.

- `registry`: `register_scorer`, and binding specs to scorers (`resolve_scorers`, `rebind`,
  `bind_from_data`); it knows no scorer itself, only how to negate one (`not-NAME`).
- `base`: what a scorer sees (`Sample`) and returns (`ScoreValue`).
- the built-in families, registered below on import: `deterministic`, `text`, `structured`,
  `agent`, `judges` (LLM-as-judge), `semantic` (embeddings), `online_judges` (agent runs),
  `steel_thread` (Portia Steel Thread assertions); `checks` and `bounded_regex` hold what
  they share.
"""

# Importing the built-in families registers their scorers (@register_scorer).
from workers.scorers import (  # noqa: F401
    agent,
    deterministic,
    judges,
    online_judges,
    semantic,
    steel_thread,
    structured,
    text,
)
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.registry import (
    ResolvedScorer,
    ScorerInfo,
    known_scorers,
    lookup,
    rebind,
    register_scorer,
    resolve_scorers,
)

__all__ = [
    "ResolvedScorer",
    "Sample",
    "ScoreValue",
    "ScorerFn",
    "ScorerInfo",
    "known_scorers",
    "lookup",
    "rebind",
    "register_scorer",
    "resolve_scorers",
]
