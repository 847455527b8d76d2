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


def differs(n_w: int, mean_w: float, var_w: float | None,
            n_b: int, mean_b: float, var_b: float) -> bool:
    """Whether a window mean lies outside the baseline's 95% interval for a window of
    that size (Welch): |mean_w - mean_b| > t(df) * sqrt(var_b/n_b + var_w/n_w).

    A one-value window borrows the baseline's variance (a prediction interval)."""
    if n_w < 1 or n_b < 2:
        return False
    var_w = var_b if var_w is None else var_w
    a, b = var_b / n_b, var_w / n_w
    if a + b == 0.0:
        return mean_w != mean_b
    if n_w >= 2 and (a > 0 or b > 0):
        denominator = (a * a) / (n_b - 1) + (b * b) / (n_w - 1)
        df = max(1, math.floor((a + b) ** 2 / denominator)) if denominator else n_b - 1
    else:
        df = n_b - 1
    return abs(mean_w - mean_b) > t_critical(df) * math.sqrt(a + b)
