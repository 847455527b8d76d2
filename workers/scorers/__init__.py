"""Scorers: named, versioned factories returning callables that score a Sample."""

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
