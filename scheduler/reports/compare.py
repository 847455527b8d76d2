"""Compare two experiments item by item: a baseline and a candidate.

Items are matched on their dataset key and averaged over repeats. Per scorer both have:
the means over the items both scored, the mean paired difference with a percentile
bootstrap 95% interval (items resampled with replacement), a verdict, and the items that
flipped between pass and fail. Cost and latency deltas, and optionally an LLM judge that
compares the two outputs of every item (`llm_pairwise`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from models.tables import Dataset, Experiment, ResultStatus
from scheduler.errors import InputError
from scheduler.reports.experiment import (
    ItemRow,
    StatRow,
    load_items,
    load_stat_rows,
    percentile,
)
from scheduler.reports.stats import mean_ci
from workers.errors import WorkerError
from workers.runtime import aio
from workers.scorers import ResolvedScorer, Sample, resolve_scorers
from workers.scoring import score_samples

KEY_CAP = 50  # keys listed in only_in_baseline / only_in_candidate
FLIP_CAP = 100  # entries listed in pass_to_fail / fail_to_pass
PAIRWISE_CONCURRENCY = 8
IMPROVED, REGRESSED, NO_CHANGE = "improved", "regressed", "no significant change"
NO_DATA = "no scored pairs"


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


Row = ItemRow | StatRow
R = TypeVar("R", bound=Row)


def _by_key(rows: Sequence[R]) -> dict[str, list[R]]:
    """Rows grouped by item key, repeats in order, keys in file order."""
    groups: dict[str, list[R]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r.position, r.repeat)):
        groups[row.key].append(row)
    return dict(groups)


def _item_score(rows: Sequence[Row], label: str) -> tuple[float, bool] | None:
    """(mean value over the scored repeats, passes) of one item, or None if never scored.
    An item passes when at least half of its scored repeats passed."""
    scored = [r.scores[label] for r in rows
              if label in r.scores and r.scores[label].get("value") is not None]
    if not scored:
        return None
    pass_rate = sum(1 for s in scored if s.get("passed")) / len(scored)
    return statistics.fmean(float(s["value"]) for s in scored), pass_rate >= 0.5


def _first_output(rows: list[ItemRow]) -> ItemRow:
    """The first repeat that produced an output (else the first repeat)."""
    return next((r for r in rows if r.output is not None), rows[0])


def _explanation(rows: list[ItemRow], label: str) -> str | None:
    return next((r.scores[label].get("explanation") for r in rows
                 if r.scores.get(label, {}).get("value") is not None), None)


MULTINOMIAL_MAX_VALUES = 256  # distinct differences up to which resamples draw counts
_BLOCK = 4_000_000  # item draws materialised at once by the index bootstrap (32 MB)


def bootstrap_ci(diffs: list[float], *, n_boot: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences: `n_boot` times,
    draw len(diffs) items with replacement (numpy's default_rng(seed)) and take the
    mean; the interval is the (1-confidence)/2 and (1+confidence)/2 quantiles of those
    means, linearly interpolated.

    Vectorised. When the differences take few distinct values (pass/fail scorers: at
    most 3), a resample is drawn as its counts of each distinct value, multinomial with
    the values' frequencies: the same distribution as drawing the items one by one, at
    O(distinct values) a resample. Otherwise the item indices are drawn in blocks."""
    if not diffs:
        raise ValueError("bootstrap_ci needs at least one difference")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng, n = np.random.default_rng(seed), len(diffs)
    values, counts = np.unique(np.asarray(diffs, dtype=np.float64), return_counts=True)
    if len(values) <= MULTINOMIAL_MAX_VALUES:
        drawn = rng.multinomial(n, counts / n, size=n_boot)
        means = drawn @ values / n
    else:
        data = np.asarray(diffs, dtype=np.float64)
        step = max(1, _BLOCK // n)
        means = np.concatenate([
            data[rng.integers(0, n, size=(min(step, n_boot - start), n))].mean(axis=1)
            for start in range(0, n_boot, step)])
    ordered = np.sort(means).tolist()
    return _quantile(ordered, (1 - confidence) / 2), _quantile(ordered, (1 + confidence) / 2)


def _quantile(ordered: list[float], q: float) -> float:
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _verdict(low: float, high: float) -> str:
    return IMPROVED if low > 0 else REGRESSED if high < 0 else NO_CHANGE


def _flip(key: str, base: list[ItemRow], cand: list[ItemRow], label: str,
          values: tuple[float, float]) -> dict[str, Any]:
    first = base[0]
    return {"key": key, "input": first.input, "expected": first.expected,
            "baseline_output": _first_output(base).output,
            "candidate_output": _first_output(cand).output,
            "baseline_value": _r(values[0]), "candidate_value": _r(values[1]),
            "baseline_explanation": _explanation(base, label),
            "candidate_explanation": _explanation(cand, label)}


Flips = dict[str, list[tuple[str, tuple[float, float]]]]


def compare_scorer(keys: list[str], base: Mapping[str, Sequence[Row]],
                   cand: Mapping[str, Sequence[Row]], label: str, *, n_boot: int,
                   seed: int) -> tuple[dict[str, Any], Flips]:
    """The comparison of one scorer over the items both experiments scored, and its
    flipped items (key, (baseline value, candidate value)); the entries listed in the
    result (up to FLIP_CAP a direction) are added by list_flips."""
    pairs: list[tuple[str, tuple[float, bool], tuple[float, bool]]] = []
    for key in keys:
        b, c = _item_score(base[key], label), _item_score(cand[key], label)
        if b is not None and c is not None:
            pairs.append((key, b, c))
    flips: Flips = {"pass_to_fail": [], "fail_to_pass": []}
    for key, (b_value, b_pass), (c_value, c_pass) in pairs:
        if b_pass != c_pass:
            flips["pass_to_fail" if b_pass else "fail_to_pass"].append(
                (key, (b_value, c_value)))
    out: dict[str, Any] = {"n_pairs": len(pairs), "baseline_mean": None,
                           "candidate_mean": None, "diff": None, "ci_low": None,
                           "ci_high": None, "ci_method": "paired bootstrap percentile",
                           "n_boot": n_boot, "verdict": NO_DATA}
    if pairs:
        b_mean = statistics.fmean(b[0] for _, b, _ in pairs)
        c_mean = statistics.fmean(c[0] for _, _, c in pairs)
        low, high = bootstrap_ci([c[0] - b[0] for _, b, c in pairs], n_boot=n_boot,
                                 seed=seed)
        out.update(baseline_mean=_r(b_mean), candidate_mean=_r(c_mean),
                   diff=_r(c_mean - b_mean), ci_low=_r(low), ci_high=_r(high),
                   verdict=_verdict(low, high))
    for name, entries in flips.items():
        out[f"n_{name}"] = len(entries)
        out[name] = []  # list_flips fills it in
    return out, flips


def list_flips(out: dict[str, Any], flips: Flips, base: dict[str, list[ItemRow]],
               cand: dict[str, list[ItemRow]], label: str) -> None:
    """The first FLIP_CAP flipped items of each direction, with their inputs and outputs
    (ItemRows with their content)."""
    for name, entries in flips.items():
        out[name] = [_flip(key, base[key], cand[key], label, values)
                     for key, values in entries[:FLIP_CAP]]


def _costs(groups: Sequence[Sequence[Row]]) -> dict[str, Any]:
    rows = [r for g in groups for r in g]
    finished = [r for r in rows if r.status is not None]
    target = sum(r.cost_usd for r in finished)
    judge = sum(s.get("judge_cost_usd") or 0.0 for r in rows for s in r.scores.values())
    total = target + judge
    return {"target": round(target, 8), "judge": round(judge, 8), "total": round(total, 8),
            "mean_per_item": round(total / len(finished), 8) if finished else None,
            "n_results": len(finished)}


def _latency(groups: Sequence[Sequence[Row]]) -> dict[str, float | None]:
    values = [r.latency_ms for g in groups for r in g
              if r.status == ResultStatus.OK and r.latency_ms is not None]
    return {"p50": _r(percentile(values, 50), 3), "p95": _r(percentile(values, 95), 3)}


def _delta(base: dict[str, Any], cand: dict[str, Any], fields: tuple[str, ...]
           ) -> dict[str, float | None]:
    return {f: None if base[f] is None or cand[f] is None else round(cand[f] - base[f], 8)
            for f in fields}


def _pairwise_scorer(pairwise: dict[str, Any]) -> ResolvedScorer:
    reserved = sorted({"type", "baseline", "label"} & set(pairwise))
    if reserved:
        raise InputError(f"pairwise options must not set {', '.join(reserved)}: the baseline "
                         "is the baseline experiment's output of each item")
    try:
        return resolve_scorers([{"type": "llm_pairwise", **pairwise}])[0]
    except WorkerError as exc:
        raise InputError(f"pairwise judge: {exc}") from exc


def pairwise_compare(keys: list[str], base: dict[str, list[ItemRow]],
                     cand: dict[str, list[ItemRow]], pairwise: dict[str, Any]
                     ) -> dict[str, Any]:
    """A judge compares each item's candidate output with its baseline output (positions
    swapped, so two judge calls per item); the win rate is the candidate's mean value."""
    scorer = _pairwise_scorer(pairwise)
    samples: list[Sample] = []
    for key in keys:
        b, c = _first_output(base[key]), _first_output(cand[key])
        if b.output is not None and c.output is not None:
            samples.append(Sample(input=c.input, expected=c.expected, output=c.output,
                                  metadata={**c.meta, "baseline_output": b.output}))
    rows = (aio.run(score_samples(scorer, samples, concurrency=PAIRWISE_CONCURRENCY))
            if samples else [])
    values = [float(r.value) for r in rows if r.value is not None]
    mean, low, high = mean_ci(values)
    errors = [r.error for r in rows if r.value is None]
    return {"judge": scorer.params.get("model"), "scorer_version": scorer.version,
            "win_rate": _r(mean), "ci_low": _r(low), "ci_high": _r(high), "ci_method": "t",
            "wins": sum(1 for v in values if v > 0.5),
            "ties": sum(1 for v in values if v == 0.5),
            "losses": sum(1 for v in values if v < 0.5),
            "position_biased": sum(1 for r in rows if (r.meta or {}).get("position_biased")),
            "n_judged": len(values), "n_could_not_judge": len(errors),
            "n_without_output": len(keys) - len(samples),
            "errors": errors[:10],
            "judge_cost_usd": round(sum(r.judge_cost_usd or 0.0 for r in rows), 8)}


def _describe(exp: Experiment, dataset: Dataset | None) -> dict[str, Any]:
    return {"id": exp.id, "name": exp.name, "status": exp.status, "model": exp.model,
            "repeats": exp.repeats, "dataset": dataset.name if dataset else None,
            "dataset_version": dataset.version if dataset else None}


def _full(experiment_id: int, groups: dict[str, list[Row]], keys: set[str],
          loaded: Sequence[Row]) -> dict[str, list[ItemRow]]:
    """ItemRows with their content by key: those loaded (when they are ItemRows), else
    the rows of `keys`, loaded now."""
    full = [r for r in loaded if isinstance(r, ItemRow)]
    if len(full) == len(loaded):
        return _by_key(full)
    ids = sorted({r.item_id for key in keys for r in groups[key]})
    return _by_key(load_items(experiment_id, item_ids=ids)[2]) if ids else {}


def compare_experiments(baseline_id: int, candidate_id: int, *, n_boot: int = 2000,
                        seed: int = 0, pairwise: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Everything `evalq compare --json` prints: the candidate against the baseline.

    Same dataset: every item is compared; different datasets or versions: the items whose
    key is in both (the result says so). InputError when no item is in both.
    Costs and latencies are over the compared items; `mean_per_item` is the mean cost of
    one (item, repeat) run, target and judge.
    """
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    # Without a pairwise judge only the listed flips show inputs and outputs: the
    # statistics are computed from StatRows, and those few items loaded in full below.
    b_rows: Sequence[Row]
    c_rows: Sequence[Row]
    b_exp, b_data, b_rows = (load_items(baseline_id) if pairwise
                             else load_stat_rows(baseline_id))
    c_exp, c_data, c_rows = (load_items(candidate_id) if pairwise
                             else load_stat_rows(candidate_id))
    base, cand = _by_key(b_rows), _by_key(c_rows)
    keys = [k for k in base if k in cand]
    if not keys:
        raise InputError(
            f"experiments {baseline_id} and {candidate_id} share no test case (matched on "
            "the item key) — compare two runs of the same dataset")
    only_base = [k for k in base if k not in cand]
    only_cand = [k for k in cand if k not in base]
    b_labels = {label for r in b_rows for label in r.scores}
    c_labels = {label for r in c_rows for label in r.scores}
    b_groups, c_groups = [base[k] for k in keys], [cand[k] for k in keys]
    b_cost, c_cost = _costs(b_groups), _costs(c_groups)
    b_lat, c_lat = _latency(b_groups), _latency(c_groups)
    compared = {label: compare_scorer(keys, base, cand, label, n_boot=n_boot, seed=seed)
                for label in sorted(b_labels & c_labels)}
    listed = {key for _, flips in compared.values() for entries in flips.values()
              for key, _ in entries[:FLIP_CAP]}
    b_full, c_full = (_full(baseline_id, base, listed, b_rows),
                      _full(candidate_id, cand, listed, c_rows))
    for label, (out, flips) in compared.items():
        list_flips(out, flips, b_full, c_full, label)
    return {
        "baseline": _describe(b_exp, b_data), "candidate": _describe(c_exp, c_data),
        "same_dataset_version": b_exp.dataset_id == c_exp.dataset_id,
        "items_compared": len(keys),
        "n_only_in_baseline": len(only_base), "only_in_baseline": only_base[:KEY_CAP],
        "n_only_in_candidate": len(only_cand), "only_in_candidate": only_cand[:KEY_CAP],
        "scorers": {label: out for label, (out, _) in compared.items()},
        "scorers_only_in_baseline": sorted(b_labels - c_labels),
        "scorers_only_in_candidate": sorted(c_labels - b_labels),
        "cost": {"baseline": b_cost, "candidate": c_cost,
                 "diff": _delta(b_cost, c_cost, ("total", "mean_per_item"))},
        "latency_ms": {"baseline": b_lat, "candidate": c_lat,
                       "diff": _delta(b_lat, c_lat, ("p50", "p95"))},
        "pairwise": pairwise_compare(keys, b_full, c_full, pairwise) if pairwise else None,
    }
