"""What the scorer families share: checks of a factory's parameters, a sample's output
and reference texts, and equality of JSON values."""

from __future__ import annotations

import json
import math
from typing import Any

from workers.errors import ScorerError
from workers.scorers.base import Sample

# --- parameter checks (TypeError/ValueError: the scorer is misconfigured) --------------------


def check_bool(name: str, value: Any) -> bool:
    """`value` if it is a boolean, else TypeError (a JSON "false" string is not one)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def check_number(name: str, value: Any, *, low: float | None = 0.0,
                 high: float | None = None) -> float:
    """`value` as a float if it is a number within [low, high], else TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return float(value)


def check_bounds(low_name: str, low: Any, high_name: str, high: Any) -> None:
    """Optional non-negative integer bounds with low <= high."""
    for name, bound in ((low_name, low), (high_name, high)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise TypeError(f"{name} must be a whole number, got {bound!r}")
        if bound is not None and bound < 0:
            raise ValueError(f"{name} must be at least 0, got {bound}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"{low_name} ({low}) is greater than {high_name} ({high})")


# --- what a sample gives (ScorerError: this sample cannot be scored) -------------------------


def output_text(sample: Sample, scorer: str) -> str:
    """The target's text output; ScorerError when it produced none."""
    if sample.output is None:
        raise ScorerError(f"{scorer}: the target produced no text output")
    return sample.output


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def reference_texts(explicit: Any, sample: Sample, scorer: str) -> list[str]:
    """The reference value(s): the parameter if given, else the test case's expected."""
    ref = explicit if explicit is not None else sample.expected
    if ref is None:
        raise ScorerError(
            f"{scorer}: the test case has no \"expected\" and the scorer got no value"
        )
    refs = ref if isinstance(ref, list) else [ref]
    if not refs:
        raise ScorerError(f"{scorer}: the reference value is an empty list")
    return [_as_text(r) for r in refs]


# --- JSON values -----------------------------------------------------------------------------


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: 1 == 1.0, but true != 1 and "1" != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)
