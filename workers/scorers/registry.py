"""The scorer registry: named, versioned factories that return scoring callables.

A scorer spec is a name (`"exact_match"`) or a dict (`{"type": "regex", "pattern":
"^\\d+$"}`); `resolve_scorers` validates specs before anything is enqueued and
records name + parameters + version, so a run can be replayed.

Data is never code: a spec that comes from a dataset (a test case's assertions) is bound
with `bind_from_data`, which knows registered scorers only and refuses a `module:function`
path without importing it. Only the operator's own specs (`--scorer`, the Python API's
`scorers=`) may name code to import.

The registry knows no scorer by itself: a scorer module registers its factories with
`@register_scorer` when it is imported (the package `workers.scorers` imports the
built-in ones), and scorers of other packages come from the `evalq.scorers` entry points,
loaded at the first lookup. It only knows how to negate one: `not-NAME` (promptfoo's `not-*`)
is the scorer NAME with its parameters, its value 1 - NAME's and its verdict inverted.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from workers.errors import ScorerConfigError, ScorerError, UnknownScorer
from workers.scorers.base import Sample, ScorerFn, ScoreValue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerInfo:
    """A registered scorer factory."""

    name: str
    version: str
    factory: Callable[..., ScorerFn]
    description: str
    reference_param: str | None = None  # falls back to the test case's expected when unset
    network: bool = False  # calls a model or an API: the longer, network deadline applies

    def parameters(self) -> dict[str, Any]:
        """Parameter name -> default (inspect.Parameter.empty if required)."""
        return {
            p.name: p.default
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


_REGISTRY: dict[str, ScorerInfo] = {}


def register_scorer(
    name: str,
    *,
    version: str = "1",
    description: str | None = None,
    reference_param: str | None = None,
    network: bool = False,
) -> Callable[[Callable[..., ScorerFn]], Callable[..., ScorerFn]]:
    """Decorator: register a factory (keyword-only parameters) under `name`.

    `reference_param` names the parameter that, when not given, is replaced by the
    test case's "expected" (so such a scorer needs expected on every line). `network`:
    the scorer calls a model or an API, so its deadline is the network one
    (EVALQ_REQUEST_TIMEOUT_S x EVALQ_MAX_ATTEMPTS), not EVALQ_SCORER_TIMEOUT_S."""

    def decorate(factory: Callable[..., ScorerFn]) -> Callable[..., ScorerFn]:
        doc = description or " ".join((inspect.getdoc(factory) or "").split("\n\n")[0].split())
        info = ScorerInfo(name, version, factory, doc, reference_param, network)
        _REGISTRY[name] = info
        setattr(factory, "__evalq_scorer__", info)  # noqa: B010  (found by module:attr specs)
        return factory

    return decorate


# --- negation: not-NAME ----------------------------------------------------------------------

NEGATION_PREFIX = "not-"
NEGATION_VERSION = "1"  # of the negation itself; a not-NAME's version is NAME's plus this one
_NEGATION_LISTING = "not-<scorer>"


def _inverted(verdict: Any) -> ScoreValue:
    if isinstance(verdict, bool | int | float):
        verdict = ScoreValue(float(verdict))
    if not isinstance(verdict, ScoreValue):
        raise ScorerError(f"returned {type(verdict).__name__}, not a ScoreValue")
    inner = verdict.explanation or ("the scorer passed" if verdict.passed
                                    else "the scorer failed")
    return ScoreValue(
        1.0 - verdict.value, not verdict.passed, f"negated: {inner}",
        {**(verdict.metadata or {}), "negated": {"value": verdict.value,
                                                 "passed": verdict.passed}},
        verdict.judge_model, verdict.judge_cost_usd, verdict.judge_tokens,
        verdict.judge_latency_ms)


async def _await_inverted(pending: Awaitable[Any]) -> ScoreValue:
    return _inverted(await pending)


def negate(fn: ScorerFn) -> ScorerFn:
    """A scoring callable giving 1 - fn's value and the opposite verdict; "could not score"
    (fn raising) stays "could not score". Async stays async, sync stays sync."""
    if inspect.iscoroutinefunction(fn):
        async def negated_async(sample: Sample) -> ScoreValue:
            return _inverted(await fn(sample))  # type: ignore[misc]
        return negated_async

    def negated(sample: Sample) -> ScoreValue | Awaitable[ScoreValue]:
        verdict = fn(sample)
        return _await_inverted(verdict) if inspect.isawaitable(verdict) else _inverted(verdict)

    return negated


def _negation(name: str, inner: ScorerInfo) -> ScorerInfo:
    def factory(**params: Any) -> ScorerFn:
        return negate(inner.factory(**params))

    factory.__signature__ = inspect.signature(inner.factory)  # type: ignore[attr-defined]
    return ScorerInfo(name, f"{inner.version}-not{NEGATION_VERSION}", factory,
                      f"negation of {inner.name}: value 1 - its value, passes when it fails",
                      inner.reference_param, inner.network)


def _negation_listing() -> ScorerFn:
    """Any scorer negated, promptfoo's not-*: not-contains, not-regex, not-json_schema... takes
    the scorer's parameters; value 1 - its value, passes when it fails, "could not score" stays
    so."""
    raise ValueError("write not- followed by a scorer's name, e.g. not-contains")


_REGISTRY[_NEGATION_LISTING] = ScorerInfo(
    _NEGATION_LISTING, NEGATION_VERSION, _negation_listing,
    " ".join((inspect.getdoc(_negation_listing) or "").split()))


_entry_points_loaded = False


def _load_entry_points() -> None:
    """Scorers installed by other packages under the `evalq.scorers` entry point group:
    a registered factory (its module's import registers it), or a plain scoring function
    registered under the entry point's name."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="evalq.scorers"):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break evalq
            log.warning("cannot load scorer entry point %s: %s", ep.value, exc)
            continue
        if ep.name not in _REGISTRY and not isinstance(getattr(obj, "__evalq_scorer__", None),
                                                       ScorerInfo):
            _REGISTRY[ep.name] = ScorerInfo(ep.name, str(getattr(obj, "version", "1")),
                                            lambda obj=obj: obj, inspect.getdoc(obj) or "",
                                            network=bool(getattr(obj, "network", False)))


def known_scorers() -> dict[str, ScorerInfo]:
    """Every registered scorer by name."""
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


@dataclass(frozen=True)
class ResolvedScorer:
    """A scorer bound to its parameters, with the label its Scores are stored under."""

    label: str
    name: str
    version: str
    params: dict[str, Any]
    fn: ScorerFn
    reference_param: str | None = None
    network: bool = False

    @property
    def needs_expected(self) -> bool:
        """True when this scorer compares to the test case's expected."""
        return self.reference_param is not None and self.params.get(self.reference_param) is None

    def spec(self) -> dict[str, Any]:
        """The JSON form stored on the experiment."""
        return {"label": self.label, "type": self.name, "version": self.version,
                "params": self.params}


def normalise_spec(spec: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, params) of a spec given as a name or as {"type": name, **params}."""
    if isinstance(spec, str):
        return spec.strip(), {}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ScorerConfigError(
            f"a scorer is a name or an object with a \"type\" field, got {spec!r}"
        )
    params = {k: v for k, v in spec.items() if k != "type"}
    return spec["type"].strip(), params


def _dotted(name: str) -> ScorerInfo:
    module_name, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise UnknownScorer(
            f"cannot import scorer {name!r} ({exc}); give it as package.module:function"
        ) from exc
    info = getattr(obj, "__evalq_scorer__", None)
    if isinstance(info, ScorerInfo):
        return info

    def factory() -> ScorerFn:
        return obj  # type: ignore[no-any-return]

    return ScorerInfo(name, getattr(obj, "version", "1"), factory, inspect.getdoc(obj) or "",
                      network=bool(getattr(obj, "network", False)))


def is_import_path(name: str) -> bool:
    """True for a name that reads as code to import (`package.module:function`, `os.system`)
    rather than as a scorer's name."""
    return ":" in name or "." in name


def lookup(name: str, *, allow_import: bool = True) -> ScorerInfo:
    """The registered scorer called `name`, or with `allow_import` (the operator's own
    specs only) the scorer at a `module:attr` dotted path, imported. Without it, a dotted
    path is refused and never imported. `not-NAME` is NAME negated (see `negate`)."""
    _load_entry_points()
    if name.startswith(NEGATION_PREFIX) and name not in _REGISTRY:
        return _negation(name, lookup(name[len(NEGATION_PREFIX):], allow_import=allow_import))
    if not allow_import:
        info = _REGISTRY.get(name)
        if info is not None:
            return info
        known = ", ".join(known_scorers())
        if is_import_path(name):
            raise UnknownScorer(
                f"{name!r} is an import path, and a dataset may name registered scorers only "
                f"(it was not imported): {known}. Give a custom scorer with --scorer "
                "module:function, or register it (@register_scorer in a module your workers "
                "import, or an evalq.scorers entry point) and name it here"
            )
        raise UnknownScorer(f"unknown scorer {name!r}; known scorers: {known}")
    if ":" in name:
        return _dotted(name)
    info = _REGISTRY.get(name)
    if info is None:
        known = ", ".join(known_scorers())
        raise UnknownScorer(
            f"unknown scorer {name!r}; known scorers: {known} "
            "(or give a custom one as module:function)"
        )
    return info


def bind(name: str, params: dict[str, Any], label: str, *, allow_import: bool = True
         ) -> ResolvedScorer:
    """Validate `params` against the factory and build the scoring callable.
    `allow_import=False` for a name that comes from data (see `lookup`)."""
    info = lookup(name, allow_import=allow_import)
    accepted = info.parameters()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ScorerConfigError(
            f"scorer {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are: {', '.join(accepted) or '(none)'}"
        )
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params]
    if missing:
        raise ScorerConfigError(f"scorer {name!r} needs parameter {', '.join(missing)}")
    try:
        fn = info.factory(**params)
    except (TypeError, ValueError) as exc:
        raise ScorerConfigError(f"scorer {name!r}: {exc}") from exc
    return ResolvedScorer(label, info.name, info.version, params, fn, info.reference_param,
                          info.network)


# Parameters a dataset may not set: where a judge sends its request (and with it the
# provider key from the workers' environment), and what it sends besides the prompt.
ROUTING_PARAMS = frozenset({"api_base", "base_url", "api_key", "api_version", "headers",
                            "extra_headers", "default_headers", "custom_llm_provider",
                            "organization", "extra_body", "azure_ad_token"})


def _routing_keys(params: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(params, dict):
        for key, value in params.items():
            where = f"{path}{key}"
            if str(key).lower() in ROUTING_PARAMS:
                found.append(where)
            found += _routing_keys(value, where + ".")
    return found


def bind_from_data(spec: Any, label: str) -> ResolvedScorer:
    """A scorer named by a dataset (a test case's assertion): registered scorers only; a
    `module:function` path is refused (UnknownScorer) without being imported, and so is a
    parameter that would send a judge's request (and the provider key) elsewhere
    (ScorerConfigError): endpoints and headers are the operator's choice, not the data's."""
    name, params = normalise_spec(spec)
    routing = _routing_keys(params)
    if routing:
        raise ScorerConfigError(
            f"{name}: parameter {routing[0]!r} may not come from a dataset (it decides where "
            "the request and the provider key go); set it with --scorer or "
            "EVALQ_JUDGE_API_BASE instead")
    return bind(name, params, label, allow_import=False)


def resolve_scorers(specs: list[str | dict[str, Any]]) -> list[ResolvedScorer]:
    """Bind every spec; labels are the names, made unique with #2, #3... on repeats."""
    resolved: list[ResolvedScorer] = []
    seen: dict[str, int] = {}
    for spec in specs:
        name, params = normalise_spec(spec)
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        resolved.append(bind(name, params, label))
    return resolved


def rebind(spec: dict[str, Any]) -> ResolvedScorer:
    """A stored spec (from Experiment.scorers) bound again in a worker."""
    return bind(spec["type"], spec.get("params") or {}, spec["label"])
