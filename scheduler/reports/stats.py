"""Small statistics for reports: a mean with its Student's t confidence interval.

Pure functions, no database. Only the 95% level is supported: the critical values for
1..30 degrees of freedom come from a table (checked against the exact Student's t
distribution to 4 decimals); beyond 30 the Cornish-Fisher expansion of t around the
normal quantile (Abramowitz & Stegun 26.7.5) is within 1e-7 of the exact value, and
tends to 1.96 as the sample grows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t, index = degrees of freedom - 1.
_T95 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = statistics.NormalDist().inv_cdf(0.975)

Interval = tuple[float | None, float | None, float | None]
"""(mean, low, high); see mean_ci for when parts are None."""


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided critical value of Student's t with `df` degrees of freedom."""
    if confidence != 0.95:
        raise ValueError(
            f"confidence {confidence} is not supported: evalq's t table covers 0.95 only"
        )
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _interval(n: int, mean: float, variance: float, confidence: float) -> Interval:
    half = t_critical(n - 1, confidence) * math.sqrt(max(variance, 0.0) / n)
    return mean, mean - half, mean + half


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of `values` and its Student's t confidence interval (low, high).

    No values: (None, None, None). One value: (value, None, None), because a single
    observation has no spread to build an interval from. Identical values: a zero-width
    interval (m, m, m). Only confidence=0.95 is supported (ValueError otherwise).
    """
    n = len(values)
    if n == 0:
        return None, None, None
    mean = statistics.fmean(values)
    if n == 1:
        return mean, None, None
    return _interval(n, mean, statistics.variance(values, mean), confidence)


def mean_ci_from_sums(
    n: int, total: float, total_sq: float, confidence: float = 0.95
) -> Interval:
    """mean_ci computed from n, sum(x) and sum(x*x) only, as a SQL GROUP BY yields them.

    Same conventions as mean_ci; agrees with it to rounding error for values in [0, 1].
    """
    if n <= 0:
        return None, None, None
    mean = total / n
    if n == 1:
        return mean, None, None
    return _interval(n, mean, (total_sq - total * total / n) / (n - 1), confidence)


def variance_from_sums(n: int, total: float, total_sq: float) -> float | None:
    """Sample variance from n, sum(x) and sum(x*x); None below two values."""
    if n < 2:
        return None
    return max(0.0, (total_sq - total * total / n) / (n - 1))


# --- drift of an online window against a baseline --------------------------------------

DRIFT_ALPHA = 0.05
"""False-alarm rate the drift test is built for (two-sided, 0.025 per direction)."""

PSEUDO_COUNT = 4.0
"""Pseudo-observations added to a non-binary baseline's variance, half at 0 and half at 1:
Agresti and Coull's "two successes and two failures" (z^2 = 3.84 rounded up)."""

FISHER_EXACT = "fisher_exact"
PREDICTION_T = "prediction_t"


@dataclass(frozen=True)
class Drift:
    """The outcome of drift_test: drifted is None when the test was not made (reason
    says why), else True/False with the method that decided."""

    drifted: bool | None
    method: str | None = None
    reason: str | None = None
    p_value: float | None = None  # fisher_exact only

    @property
    def tested(self) -> bool:
        return self.drifted is not None


def is_binary(n: int, total: float, total_sq: float) -> bool:
    """Whether n scores in [0, 1] with these sums are all 0 or 1.

    For x in [0, 1], x - x*x >= 0 with equality only at 0 and 1, so sum(x) == sum(x*x)
    exactly when every score is 0 or 1 (and then both sums are whole numbers)."""
    if n < 1 or not -1e-9 <= total <= n + 1e-9:
        return False
    return abs(total - total_sq) <= 1e-9 * n and abs(total - round(total)) <= 1e-6


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeometric_tail(x: int, draws: int, successes: int, population: int) -> float:
    """The tail of X ~ Hypergeometric(population, successes, draws) on x's side of the
    mean: P(X <= x) when x <= the mean, else P(X >= x).

    Summed outward from x with the ratio of consecutive probabilities, and stopped once
    the terms (past the mode) no longer change the sum, so a far tail costs a few terms
    however large the population."""
    failures = population - successes
    lo, hi = max(0, draws - failures), min(draws, successes)
    if not (0 <= successes <= population and 0 <= draws <= population and lo <= x <= hi):
        raise ValueError(f"x={x} is outside the support [{lo}, {hi}] of Hypergeometric("
                         f"{population}, {successes}, {draws})")
    step = -1 if x * population <= draws * successes else 1
    term = math.exp(_log_comb(successes, x) + _log_comb(failures, draws - x)
                    - _log_comb(population, draws))
    total, k = term, x
    while lo <= k + step <= hi:
        if step > 0:
            ratio = (successes - k) * (draws - k) / ((k + 1) * (failures - draws + k + 1))
        else:
            ratio = k * (failures - draws + k) / ((successes - k + 1) * (draws - k + 1))
        k += step
        term *= ratio
        if ratio < 1 and term <= 1e-17 * total:
            break
        total += term
    return min(1.0, total)


def fisher_p(n_w: int, passed_w: int, n_b: int, passed_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that a window and a baseline of 0/1
    scores share one pass rate: twice the one-sided tail on the window's side (the
    "central" p-value), at most 1. Conditional on the total number of passes, the
    window's passes are hypergeometric whatever the common rate, so a test at level
    alpha raises at most alpha false alarms for every pass rate and size."""
    return min(1.0, 2 * hypergeometric_tail(passed_w, n_w, passed_w + passed_b, n_w + n_b))


def floored_variance(n: int, total: float, total_sq: float) -> float:
    """A baseline's sample variance, at least that of the baseline with PSEUDO_COUNT
    pseudo-scores added, half at 0 and half at 1 (for 0/1 scores this is Agresti-Coull's
    p~(1 - p~)). A baseline of identical scores (variance 0) would otherwise make any
    window that differs at all "drift"."""
    k = PSEUDO_COUNT
    augmented = variance_from_sums(int(n + k), total + k / 2, total_sq + k / 2) or 0.0
    return max(variance_from_sums(n, total, total_sq) or 0.0, augmented)


def prediction_differs(n_w: int, mean_w: float, n_b: int, mean_b: float,
                       var_b: float) -> bool:
    """Whether a window mean lies outside the 95% prediction interval of the mean of n_w
    new scores drawn from the baseline: |mean_w - mean_b| > t(n_b - 1) *
    sqrt(var_b / n_w + var_b / n_b). Under "no drift" the window comes from the
    baseline, so its noise is the baseline's: the window's own variance is not used
    (a window of identical scores has variance 0 and would otherwise always differ)."""
    if n_w < 1 or n_b < 2:
        raise ValueError(f"need a window of n >= 1 and a baseline of n >= 2, not "
                         f"{n_w} and {n_b}")
    half = t_critical(n_b - 1) * math.sqrt(max(var_b, 0.0) * (1 / n_w + 1 / n_b))
    return abs(mean_w - mean_b) > half


def drift_test(n_w: int, total_w: float, total_sq_w: float,
               n_b: int, total_b: float, total_sq_b: float, *, min_n: int) -> Drift:
    """Whether a window of scores in [0, 1] drifted from a baseline, at a 5% false-alarm
    rate, from the counts and sums (sum of x, sum of x*x) of each.

    Not tested (drifted None) when the window or the baseline has fewer than `min_n`
    scored runs (the baseline also needs 2). When both hold only 0/1 scores: Fisher's
    exact test (fisher_p <= 0.05), whose false-alarm rate is at most 5% for any pass
    rate and size, however skewed (a 0.99 pass rate in a window of 10). Otherwise: the
    prediction interval of prediction_differs, with the baseline's variance floored by
    floored_variance so that a baseline of identical scores still has some noise.
    """
    min_n = max(1, min_n)
    if n_b < max(min_n, 2):
        return Drift(None, reason=f"baseline has {n_b} scored runs, fewer than "
                     f"{max(min_n, 2)}")
    if n_w < min_n:
        return Drift(None, reason=f"too few: {n_w} scored runs, fewer than {min_n}")
    if is_binary(n_w, total_w, total_sq_w) and is_binary(n_b, total_b, total_sq_b):
        p = fisher_p(n_w, round(total_w), n_b, round(total_b))
        return Drift(p <= DRIFT_ALPHA, FISHER_EXACT, p_value=p)
    var_b = floored_variance(n_b, total_b, total_sq_b)
    return Drift(prediction_differs(n_w, total_w / n_w, n_b, total_b / n_b, var_b),
                 PREDICTION_T)
