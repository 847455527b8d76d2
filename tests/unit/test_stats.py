"""The drift test's error rates on synthetic data: at most about 5% false alarms on a
stable stream, and a real shift caught. (The full grid of pass rates and window sizes
is in test_drift.py.)"""

from __future__ import annotations

import random

from scheduler.reports.stats import drift_test


def _window(rng: random.Random, n: int, shift: float = 0.0) -> tuple[int, float, float]:
    values = [min(1.0, max(0.0, rng.random() + shift)) for _ in range(n)]
    return n, sum(values), sum(v * v for v in values)


def test_stable_stream_raises_few_false_alarms():
    rng = random.Random(7)
    base = _window(rng, 5000)
    flags = [drift_test(*_window(rng, 20), *base, min_n=10).drifted for _ in range(2000)]
    rate = sum(map(bool, flags)) / len(flags)
    assert 0.02 <= rate <= 0.07, rate  # a 95% prediction interval: about 5% by chance


def test_a_real_shift_is_caught():
    rng = random.Random(11)
    base = _window(rng, 5000)
    flags = [drift_test(*_window(rng, 50, shift=-0.2), *base, min_n=10).drifted
             for _ in range(500)]
    assert sum(map(bool, flags)) / len(flags) > 0.95


def test_small_baselines_and_windows_are_not_tested():
    assert drift_test(10, 1.0, 0.1, 1, 0.9, 0.81, min_n=1).drifted is None  # baseline of 1
    assert drift_test(9, 0.9, 0.09, 100, 90.0, 81.0, min_n=10).drifted is None
    assert drift_test(0, 0.0, 0.0, 100, 90.0, 81.0, min_n=1).drifted is None


def test_single_value_window_uses_the_baseline_spread():
    # baseline: 100 scores, mean 0.5, variance about 0.04
    base = (100, 50.0, 100 * (0.25 + 0.04 * 99 / 100))
    assert drift_test(1, 0.5, 0.25, *base, min_n=1).drifted is False
    assert drift_test(1, 0.45, 0.2025, *base, min_n=1).drifted is False
    # a baseline of 0.9 +- 0.01: a lone 0.0 is drift even with the variance floor
    tight = (100, 90.0, 100 * (0.81 + 0.0001 * 99 / 100))
    assert drift_test(1, 0.0, 0.0, *tight, min_n=1).drifted is True
