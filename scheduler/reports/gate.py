"""A CI gate over an experiment report: score thresholds, and no regression vs a baseline.

`evaluate_gate` returns whether the gate passed, why it failed, and one line for a CI log:

    GATE PASSED: exact_match 0.93 >= 0.90; no regression vs experiment 4
    GATE FAILED: exact_match 0.71 < 0.90; judge regressed by -0.12 [-0.20, -0.05] vs experiment 4
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from models.tables import ExperimentStatus
from scheduler.errors import InputError


@dataclass
class GateResult:
    """The gate's outcome: `ok`, the reasons it failed (empty when it passed) and the
    one-line summary, which lists every check when it passed and the failures otherwise."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    line: str = ""


def parse_thresholds(pairs: Iterable[str]) -> dict[str, float]:
    """`["exact_match=0.9", "judge=0.7"]` -> `{"exact_match": 0.9, "judge": 0.7}`.

    InputError for a pair without `=`, an empty label, a value that is not a number in
    [0, 1], or a label given twice."""
    thresholds: dict[str, float] = {}
    for pair in pairs:
        label, sep, raw = pair.partition("=")
        label = label.strip()
        if not sep or not label:
            raise InputError(f"threshold {pair!r} is not LABEL=VALUE — write it like "
                             "exact_match=0.9")
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"threshold {pair!r}: {raw.strip()!r} is not a number — give a "
                             "score between 0 and 1, like exact_match=0.9") from None
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise InputError(f"threshold {pair!r}: scores are between 0 and 1 — give a value "
                             "in [0, 1], like exact_match=0.9")
        if label in thresholds:
            raise InputError(f"threshold for {label!r} is given twice — keep one")
        thresholds[label] = value
    return thresholds


def check_labels(thresholds: dict[str, float], labels: Iterable[str]) -> None:
    """InputError, listing the valid labels, when a threshold names no scorer of the run
    (`labels`: the run's scorer labels and its test cases' assert:TYPE labels)."""
    valid = sorted(set(labels))
    unknown = [label for label in thresholds if label not in valid]
    if not unknown:
        return
    names = ", ".join(valid) or "none"
    which = ", ".join(repr(label) for label in unknown)
    raise InputError(f"--fail-under {which}: not a scorer of this run (its scorers: {names})"
                     " — name one of them; nothing was run")


def _pair(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with 2 decimals, or more when 2 would make different numbers look
    the same."""
    for digits in range(2, 7):
        a, b = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if a != b or value == threshold:
            return a, b
    return f"{value!r}", f"{threshold!r}"


def _threshold_check(report: dict[str, Any], label: str, threshold: float
                     ) -> tuple[bool, str]:
    scorers = report.get("scorers") or {}
    if label not in scorers:
        names = ", ".join(sorted(scorers)) or "none"
        return False, (f"{label} is not a scorer of experiment {report.get('experiment_id')} "
                       f"(its scorers: {names}) — check the --fail-under label")
    mean = scorers[label].get("mean")
    if mean is None:
        return False, f"{label} has no scored value (every score failed or none was written)"
    shown, wanted = _pair(mean, threshold)
    if mean >= threshold:
        return True, f"{label} {shown} >= {wanted}"
    return False, f"{label} {shown} < {wanted}"


def _regression_checks(comparison: dict[str, Any], report: dict[str, Any],
                       fail_on_regression: bool) -> list[tuple[bool, str]]:
    candidate = (comparison.get("candidate") or {}).get("id")
    if candidate != report.get("experiment_id"):
        raise InputError(f"the comparison's candidate is experiment {candidate} but the report "
                         f"is of experiment {report.get('experiment_id')} — compare the "
                         "experiment being gated against the baseline")
    baseline = (comparison.get("baseline") or {}).get("id")
    suffix = "" if fail_on_regression else " (not gating)"
    checks: list[tuple[bool, str]] = []
    for label, stats in sorted((comparison.get("scorers") or {}).items()):
        if stats.get("verdict") == "regressed":
            checks.append((not fail_on_regression,
                           f"{label} regressed by {stats['diff']:.2f} [{stats['ci_low']:.2f}, "
                           f"{stats['ci_high']:.2f}] vs experiment {baseline}{suffix}"))
    if not checks:
        checks.append((True, f"no regression vs experiment {baseline}"))
    return checks


def evaluate_gate(report: dict[str, Any], *, fail_under: dict[str, float],
                  comparison: dict[str, Any] | None = None,
                  fail_on_regression: bool = False) -> GateResult:
    """Check `report` (experiment_report's dict) against the thresholds on each scorer's
    mean, and, with `comparison` (compare_experiments' dict, this experiment as the
    candidate) and fail_on_regression, that no scorer regressed. An experiment that is not
    completed fails the gate."""
    checks: list[tuple[bool, str]] = []
    status = report.get("status")
    if status != ExperimentStatus.COMPLETED:
        checks.append((False, f"experiment {report.get('experiment_id')} is {status}, not "
                              "completed — wait for it to finish before gating"))
    checks += [_threshold_check(report, label, t) for label, t in fail_under.items()]
    if comparison is not None:
        checks += _regression_checks(comparison, report, fail_on_regression)
    reasons = [text for ok, text in checks if not ok]
    if reasons:
        return GateResult(False, reasons, "GATE FAILED: " + "; ".join(reasons))
    shown = [text for _, text in checks] or [f"experiment {report.get('experiment_id')} "
                                             "completed (no threshold given)"]
    return GateResult(True, [], "GATE PASSED: " + "; ".join(shown))
