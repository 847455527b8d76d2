"""The online drift test (scheduler.reports.stats.drift_test): hand-worked and exact
values, and a seeded simulation of its false-alarm rate and power.

The simulation draws windows from the same distribution as a baseline (no drift) over
pass rates 0.5-0.99 and window sizes 10-1000 with baselines of 200 and 2000 scored runs,
for 0/1 scores and for bounded continuous Beta(a, 1) scores, and requires at most 6%
false alarms at every grid point. Power (a real drop caught) is asserted loosely and
printed: `python -m tests.unit.test_drift` prints the whole table.

Pure Python (no numpy): a binomial count is drawn by inverting its CDF (a table per
(n, p), bisected), so a window of 1000 costs one uniform draw.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable

import pytest

from scheduler.reports.stats import (
    FISHER_EXACT,
    PREDICTION_T,
    drift_test,
    fisher_p,
    floored_variance,
    hypergeometric_tail,
    is_binary,
    prediction_differs,
    t_critical,
)

PASS_RATES = (0.5, 0.7, 0.9, 0.95, 0.99)
WINDOWS = (10, 20, 50, 200, 1000)
BASELINES = (200, 2000)
BETA_A = (1.0, 4.0, 19.0)  # Beta(a, 1): means 0.5, 0.8, 0.95, skewed towards 1
MAX_FALSE_ALARMS = 0.06


# --- samplers ---------------------------------------------------------------------------


def binomial(n: int, p: float) -> Callable[[random.Random], int]:
    """A sampler of Binomial(n, p): the inverse of its CDF, tabulated once."""
    if p >= 1.0:
        return lambda rng: n
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p) for k in range(n + 1)]
    cdf, acc = [], 0.0
    for log_p in logs:
        acc += math.exp(log_p)
        cdf.append(acc)
    return lambda rng: min(n, bisect.bisect_left(cdf, rng.random() * acc))


def binary_flag_rate(p_b: float, p_w: float, n_w: int, n_b: int, reps: int,
                     rng: random.Random) -> float:
    """Share of `reps` (baseline, window) pairs of 0/1 scores flagged as drift."""
    base, window = binomial(n_b, p_b), binomial(n_w, p_w)
    flags = 0
    for _ in range(reps):
        x_b, x_w = base(rng), window(rng)
        flags += bool(drift_test(n_w, x_w, x_w, n_b, x_b, x_b, min_n=10).drifted)
    return flags / reps


def beta_flag_rates(a: float, n_b: int, windows: tuple[int, ...], reps: int,
                    rng: random.Random, shift: float = 0.0) -> dict[int, float]:
    """Per window size, the share of `reps` baselines of n_b Beta(a, 1) scores whose
    window (shifted down by `shift`, clipped at 0) is flagged. Each rep draws a fresh
    baseline and one fresh window of every size."""
    e, r = 1.0 / a, rng.random
    flags = dict.fromkeys(windows, 0)
    for _ in range(reps):
        base = [r() ** e for _ in range(n_b)]
        total_b, total_sq_b = sum(base), sum(x * x for x in base)
        for n_w in windows:
            window = [max(0.0, r() ** e - shift) for _ in range(n_w)]
            total_w = sum(window)
            # the window's sum of squares only tells binary from not: any non-0/1 value
            drift = drift_test(n_w, total_w, total_w * 0.5, n_b, total_b, total_sq_b,
                               min_n=10)
            assert drift.method == PREDICTION_T
            flags[n_w] += bool(drift.drifted)
    return {n_w: f / reps for n_w, f in flags.items()}


# --- exact values -----------------------------------------------------------------------


def _hypergeometric_by_hand(x: int, draws: int, successes: int, population: int,
                            lower: bool) -> float:
    pmf = [math.comb(successes, k) * math.comb(population - successes, draws - k)
           for k in range(draws + 1)]
    whole = math.comb(population, draws)
    return sum(pmf[: x + 1] if lower else pmf[x:]) / whole


@pytest.mark.parametrize("x, draws, successes, population", [
    (1, 10, 1, 210), (0, 10, 1, 210), (5, 10, 100, 210), (9, 10, 190, 210),
    (40, 50, 900, 1000), (50, 50, 900, 1000), (3, 50, 900, 1000), (12, 30, 20, 60),
])
def test_hypergeometric_tail_matches_exact_sums(x: int, draws: int, successes: int,
                                                population: int) -> None:
    lower = x * population <= draws * successes
    expected = _hypergeometric_by_hand(x, draws, successes, population, lower)
    assert hypergeometric_tail(x, draws, successes, population) == pytest.approx(
        expected, rel=1e-9, abs=1e-300)


# Two-sided p (twice the smaller one-sided tail, capped at 1) from scipy 1.17's
# stats.fisher_exact(table, alternative="less"/"greater") on [[x_w, n_w - x_w],
# [x_b, n_b - x_b]], computed once outside this suite (scipy is not a dependency).
SCIPY_FISHER = [
    (10, 9, 200, 200, 0.09523809523809523),
    (20, 15, 500, 470, 0.015347153417925512),
    (50, 40, 1000, 900, 0.05827784623419122),
    (200, 150, 2000, 1600, 0.1187840059451414),
    (10, 2, 30, 20, 0.026476391501858394),
]


@pytest.mark.parametrize("n_w, x_w, n_b, x_b, expected", SCIPY_FISHER)
def test_fisher_p_agrees_with_scipy(n_w: int, x_w: int, n_b: int, x_b: int,
                                    expected: float) -> None:
    assert fisher_p(n_w, x_w, n_b, x_b) == pytest.approx(expected, rel=1e-6)


def test_a_baseline_of_all_passes() -> None:
    # 200 of 200 passed. One failure in a window of 10: P(it lands in the window) =
    # 10/210 = 0.048, two-sided 0.095: not drift. 6 of 10: drift.
    one_fail = drift_test(10, 9, 9, 200, 200, 200, min_n=10)
    assert one_fail.drifted is False and one_fail.method == FISHER_EXACT
    assert one_fail.p_value == pytest.approx(2 * 10 / 210)
    assert drift_test(20, 19, 19, 200, 200, 200, min_n=10).drifted is False
    assert drift_test(10, 10, 10, 200, 200, 200, min_n=10).drifted is False
    assert drift_test(10, 6, 6, 200, 200, 200, min_n=10).drifted is True
    assert drift_test(50, 45, 45, 200, 200, 200, min_n=10).drifted is True


def test_too_few_runs_are_not_tested() -> None:
    few = drift_test(9, 0, 0, 200, 200, 200, min_n=10)
    assert few.drifted is None and not few.tested and few.method is None
    assert few.reason is not None and "too few" in few.reason
    small_base = drift_test(50, 0, 0, 5, 5, 5, min_n=10)
    assert small_base.drifted is None and small_base.reason is not None
    assert "baseline" in small_base.reason
    assert drift_test(1, 0, 0, 2, 2, 2, min_n=1).tested  # min_n=1: a window of one


def test_is_binary_reads_the_sums() -> None:
    assert is_binary(10, 7.0, 7.0)
    assert is_binary(10, 0.0, 0.0) and is_binary(10, 10.0, 10.0)
    assert not is_binary(2, 1.0, 0.5)  # 0.5 + 0.5
    assert not is_binary(3, 1.5, 1.25)  # 0, 0.5, 1
    assert not is_binary(0, 0.0, 0.0)


def test_prediction_interval_by_hand() -> None:
    # var 0.04, n_w 25, n_b 101: half-width t(100) * 0.2 * sqrt(1/25 + 1/101)
    half = t_critical(100) * 0.2 * math.sqrt(1 / 25 + 1 / 101)
    assert half == pytest.approx(0.08858, abs=1e-4)
    assert not prediction_differs(25, 0.7 - half + 1e-6, 101, 0.7, 0.04)
    assert prediction_differs(25, 0.7 - half - 1e-6, 101, 0.7, 0.04)


def test_a_baseline_of_identical_non_binary_scores_has_a_variance_floor() -> None:
    # 200 scores of 0.8 plus 2 pseudo-scores at 0 and 2 at 1: variance of that sample
    n, total, total_sq = 200, 160.0, 128.0
    values = [0.8] * 200 + [0.0, 0.0, 1.0, 1.0]
    mean = sum(values) / len(values)
    expected = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    assert floored_variance(n, total, total_sq) == pytest.approx(expected)
    one_low = [0.8] * 9 + [0.6]  # a single lower score: not drift
    low = drift_test(10, sum(one_low), sum(v * v for v in one_low), n, total, total_sq,
                     min_n=10)
    assert low.drifted is False and low.method == PREDICTION_T
    assert drift_test(10, 5.0, 2.6, n, total, total_sq, min_n=10).drifted is True


def test_the_window_spread_does_not_matter() -> None:
    """The old Welch test flagged a window of identical scores (variance 0); the window's
    noise is now the baseline's, whatever its own."""
    base = (1000, 800.0, 800.0 * 0.8 + 1000 * 0.02)  # mean 0.8, variance ~0.02
    same = drift_test(20, 16.0, 12.8, *base, min_n=10)  # twenty 0.8s
    spread = drift_test(20, 16.0, 13.4, *base, min_n=10)
    assert same.drifted is False and spread.drifted is False


# --- simulation ---------------------------------------------------------------------------


def binary_grid(reps: int, seed: int = 13) -> dict[tuple[float, int, int], float]:
    rng = random.Random(seed)
    return {(p, n_w, n_b): binary_flag_rate(p, p, n_w, n_b, reps, rng)
            for p in PASS_RATES for n_w in WINDOWS for n_b in BASELINES}


def beta_grid(reps: int, seed: int = 17) -> dict[tuple[float, int, int], float]:
    rng = random.Random(seed)
    return {(a / (a + 1), n_w, n_b): rate
            for a in BETA_A for n_b in BASELINES
            for n_w, rate in beta_flag_rates(a, n_b, WINDOWS, reps, rng).items()}


def power_table(reps: int, seed: int = 19) -> dict[str, float]:
    """Share of windows flagged after a drop of 0.10 in pass rate (0/1 scores) or in
    mean (Beta(a, 1) scores shifted down by 0.10), per window and baseline size."""
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for p in (0.95, 0.9, 0.8, 0.7):
        for n_w in (20, 50, 200):
            for n_b in (200, 1000):
                out[f"0/1 {p:.2f}->{p - 0.1:.2f} n_w={n_w} n_b={n_b}"] = binary_flag_rate(
                    p, p - 0.1, n_w, n_b, reps, rng)
    for a in (1.0, 4.0):
        for n_b in (200, 1000):
            rates = beta_flag_rates(a, n_b, (20, 50, 200), reps // 4, rng, shift=0.1)
            for n_w, rate in rates.items():
                out[f"Beta({a:g},1) mean {a / (a + 1):.2f} -0.10 n_w={n_w} n_b={n_b}"] = rate
    return out


def test_binary_false_alarms_stay_under_6_percent_everywhere() -> None:
    rates = binary_grid(reps=3000)
    worst = max(rates, key=rates.__getitem__)
    print(f"\n0/1 scores: worst false-alarm rate {rates[worst]:.4f} at "
          f"(pass rate, n_window, n_baseline) = {worst}")
    assert rates[worst] <= MAX_FALSE_ALARMS, rates
    # the case: Bernoulli(0.95), windows of 20 (the Welch test flagged 36%)
    assert rates[(0.95, 20, 200)] <= 0.03


def test_bounded_continuous_false_alarms_stay_under_6_percent_everywhere() -> None:
    rates = beta_grid(reps=1500)
    worst = max(rates, key=rates.__getitem__)
    print(f"\nBeta(a, 1) scores: worst false-alarm rate {rates[worst]:.4f} at "
          f"(mean, n_window, n_baseline) = {worst}")
    assert rates[worst] <= MAX_FALSE_ALARMS, rates


def test_a_drop_of_ten_points_is_caught() -> None:
    power = power_table(reps=800)
    print("\npower (share of windows flagged) after a drop of 0.10:")
    for case, rate in power.items():
        print(f"  {case}: {rate:.3f}")
    assert power["0/1 0.90->0.80 n_w=200 n_b=1000"] >= 0.9
    assert power["0/1 0.95->0.85 n_w=50 n_b=1000"] >= 0.5
    assert power["Beta(4,1) mean 0.80 -0.10 n_w=50 n_b=1000"] >= 0.9


if __name__ == "__main__":
    for name, grid in (("0/1", binary_grid(3000)), ("Beta(a,1)", beta_grid(1500))):
        print(f"{name} false alarms (mean or pass rate, n_window, n_baseline):")
        for key, rate in grid.items():
            print(f"  {key}: {rate:.4f}")
        print(f"  max {max(grid.values()):.4f}")
    print("power after a drop of 0.10:")
    for case, rate in power_table(2000).items():
        print(f"  {case}: {rate:.3f}")
