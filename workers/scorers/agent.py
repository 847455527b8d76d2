"""Agent scorers: which tools were called and how, the final outcome, the number of steps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workers.errors import ScorerError
from workers.scorers.base import Sample, ScorerFn, ScoreValue
from workers.scorers.checks import check_bool, check_bounds, json_equal
from workers.scorers.registry import register_scorer

MAX_LISTED_TOOLS = 10


@dataclass(frozen=True)
class WantedCall:
    """One expected call: a tool name and, optionally, a subset of its arguments."""

    name: str
    arguments: dict[str, Any] | None = None

    def matches(self, call: MadeCall) -> bool:
        if call.name != self.name:
            return False
        return self.arguments is None or arguments_match(self.arguments, call.arguments)

    def __str__(self) -> str:
        args = json.dumps(self.arguments, sort_keys=True)[:80] if self.arguments else ""
        return f"{self.name}({args})"


@dataclass(frozen=True)
class MadeCall:
    """A call the target made; arguments None when they are not a JSON object."""

    name: str
    arguments: dict[str, Any] | None


def arguments_match(want: dict[str, Any], got: dict[str, Any] | None) -> bool:
    """Every key of `want` is in `got` with a JSON-equal value (objects: a subset, recursively)."""
    if got is None:
        return False
    for key, expected in want.items():
        if key not in got:
            return False
        actual = got[key]
        if isinstance(expected, dict) and isinstance(actual, dict):
            if not arguments_match(expected, actual):
                return False
        elif not json_equal(expected, actual):
            return False
    return True


def _parse_arguments(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return {}  # some providers send "" for a call without arguments
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    return raw if isinstance(raw, dict) else None


def actual_calls(sample: Sample) -> list[MadeCall]:
    """The calls the target made, their arguments parsed; ScorerError for a nameless one."""
    calls = []
    for i, call in enumerate(sample.tool_calls or []):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ScorerError(f"tool_calls: the target's call #{i + 1} has no tool name: "
                              f"{str(call)[:80]}")
        calls.append(MadeCall(call["name"], _parse_arguments(call.get("arguments"))))
    return calls


def _arguments_param(where: str, arguments: Any) -> dict[str, Any] | None:
    if arguments is not None and not isinstance(arguments, dict):
        raise TypeError(f"{where} must be an object of argument values, got {arguments!r}")
    return arguments


def bind_rules(calls: Any, *, allow_empty: bool = False) -> list[tuple[WantedCall, bool]]:
    """Steel Thread's form {"tool": {"called": bool, "arguments": {...}}} -> (want, called).
    An empty object is refused unless `allow_empty` (Steel Thread's own scoring takes it)."""
    if not isinstance(calls, dict) or not (calls or allow_empty):
        raise TypeError(f'calls must be an object like {{"search": {{"called": true}}}}, '
                        f"got {calls!r}")
    rules = []
    for name, rule in calls.items():
        if not isinstance(rule, dict):
            raise TypeError(f'calls[{name!r}] must be an object like {{"called": true}}, '
                            f"got {rule!r}")
        unknown = sorted(set(rule) - {"called", "arguments"})
        if unknown:
            raise ValueError(f"calls[{name!r}] has unknown keys {', '.join(unknown)}; "
                             "its keys are called and arguments")
        called = check_bool(f"calls[{name!r}].called", rule.get("called", True))
        arguments = _arguments_param(f"calls[{name!r}].arguments", rule.get("arguments"))
        if arguments is not None and not called:
            raise ValueError(f"calls[{name!r}] has arguments but called: false; arguments "
                             "are only checked on a tool that must be called")
        rules.append((WantedCall(name, arguments), called))
    return rules


def _bind_expected(expected: Any) -> list[WantedCall]:
    if not isinstance(expected, list) or not expected:
        raise TypeError(f'expected must be a non-empty list like [{{"name": "search"}}], '
                        f"got {expected!r}")
    wants = []
    for i, item in enumerate(expected):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not item["name"]:
            raise TypeError(f'expected[{i}] must be an object with a "name", got {item!r}')
        unknown = sorted(set(item) - {"name", "arguments"})
        if unknown:
            raise ValueError(f"expected[{i}] has unknown keys {', '.join(unknown)}; "
                             "its keys are name and arguments")
        arguments = _arguments_param(f"expected[{i}].arguments", item.get("arguments"))
        wants.append(WantedCall(item["name"], arguments))
    return wants


def _unordered(wants: list[WantedCall], calls: list[MadeCall]) -> list[bool]:
    """Which wants get a call of their own in a maximum matching (each call used once)."""
    owner: dict[int, int] = {}  # call index -> want index

    def assign(i: int, seen: set[int]) -> bool:
        for j, call in enumerate(calls):
            if j not in seen and wants[i].matches(call):
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(wants)):
        assign(i, set())
    return [i in owner.values() for i in range(len(wants))]


def _in_order(wants: list[WantedCall], calls: list[MadeCall]) -> list[bool]:
    """Which wants belong to a longest in-order matching (a subsequence of the calls)."""
    n, m = len(wants), len(calls)
    hit = [[w.matches(c) for c in calls] for w in wants]
    best = [[0] * (m + 1) for _ in range(n + 1)]  # best[i][j]: wants[i:] within calls[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = max(best[i + 1][j], best[i][j + 1],
                             best[i + 1][j + 1] + 1 if hit[i][j] else 0)
    matched, i, j = [False] * n, 0, 0
    while i < n and j < m:
        if hit[i][j]:  # taking a match never loses: calls[j] could add at most 1 otherwise
            matched[i], i, j = True, i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1
    return matched


def called_text(names: list[str]) -> str:
    """The tools called, for an explanation (the first MAX_LISTED_TOOLS of them)."""
    if not names:
        return "no tools called"
    more = len(names) - MAX_LISTED_TOOLS
    return ("tools called: " + ", ".join(names[:MAX_LISTED_TOOLS])
            + (f" (and {more} more)" if more > 0 else ""))


@register_scorer("tool_calls", version="1")
def tool_calls(
    *,
    calls: dict[str, Any] | None = None,
    expected: list[Any] | None = None,
    order_sensitive: bool = False,
    allow_extra: bool = True,
) -> ScorerFn:
    """The target called the expected tools (with the given arguments, in order if asked)."""
    if calls is None and expected is None:
        raise ValueError('give calls (like {"search": {"called": true}}) or expected '
                         '(like [{"name": "search", "arguments": {"q": "x"}}]), or both')
    rules = bind_rules(calls) if calls is not None else []
    wants = _bind_expected(expected) if expected is not None else []
    check_bool("order_sensitive", order_sensitive)
    check_bool("allow_extra", allow_extra)
    known = {want.name for want, _ in rules} | {want.name for want in wants}

    def score(sample: Sample) -> ScoreValue:
        actual = actual_calls(sample)
        checks: list[tuple[str, bool]] = []
        for want, called in rules:
            hit = any(want.matches(call) for call in actual)
            checks.append((f"{want} called" if called else f"{want.name} not called",
                           hit == called))
        found = (_in_order if order_sensitive else _unordered)(wants, actual) if wants else []
        order = " in order" if order_sensitive else ""
        checks += [(f"expected #{i + 1} {want}{order}", ok)
                   for i, (want, ok) in enumerate(zip(wants, found, strict=True))]
        if not allow_extra:
            extra = sorted({call.name for call in actual} - known)
            checks.append((f"no other tools (also called {', '.join(extra)})" if extra
                           else "no other tools", not extra))
        names = [call.name for call in actual]
        failed = [label for label, ok in checks if not ok]
        meta = {"failed": failed, "called": names}
        listed = called_text(names)
        if not failed:
            return ScoreValue(1.0, True, f"all {len(checks)} checks passed; {listed}", meta)
        return ScoreValue((len(checks) - len(failed)) / len(checks), False,
                          f"{len(failed)} of {len(checks)} checks failed: "
                          f"{'; '.join(failed)}; {listed}", meta)

    return score


@register_scorer("outcome", version="1")
def outcome(*, value: str = "COMPLETE") -> ScorerFn:
    """The agent's final outcome equals `value` (case-insensitive), COMPLETE by default."""
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"value must be an outcome name such as \"COMPLETE\", got {value!r}")
    want = value.strip().casefold()

    def score(sample: Sample) -> ScoreValue:
        if sample.outcome is None:
            raise ScorerError("outcome: the target reported no outcome")
        ok = sample.outcome.strip().casefold() == want
        return ScoreValue(1.0 if ok else 0.0, ok, f"outcome {sample.outcome!r}"
                          + ("" if ok else f", expected {value!r}"))

    return score


@register_scorer("step_count", version="1")
def step_count(*, min_steps: int | None = None, max_steps: int | None = None) -> ScorerFn:
    """The agent took between min_steps and max_steps steps."""
    if min_steps is None and max_steps is None:
        raise ValueError("give min_steps, max_steps or both")
    check_bounds("min_steps", min_steps, "max_steps", max_steps)

    def score(sample: Sample) -> ScoreValue:
        if sample.steps is None:
            raise ScorerError("step_count: the target reported no steps")
        count = len(sample.steps)
        low = min_steps if min_steps is not None else 0
        high = max_steps if max_steps is not None else count
        ok = low <= count <= high
        bounds = " and ".join(b for b in (f">= {min_steps}" if min_steps is not None else "",
                                          f"<= {max_steps}" if max_steps is not None else "")
                              if b)
        return ScoreValue(1.0 if ok else 0.0, ok,
                          f"{count} steps, {'within' if ok else 'not'} {bounds}")

    return score
