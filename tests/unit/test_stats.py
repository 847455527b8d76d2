"""The drift test's error rates on synthetic data: about 5% false alarms on a stable
stream, and a real shift caught."""

from __future__ import annotations

import random
import statistics

from scheduler.reports.stats import differs


def _window(rng: random.Random, n: int, shift: float = 0.0) -> tuple[int, float, float]:
    values = [min(1.0, max(0.0, rng.random() + shift)) for _ in range(n)]
    return n, statistics.fmean(values), statistics.variance(values)


def test_stable_stream_raises_few_false_alarms():
    rng = random.Random(7)
    n_b, mean_b, var_b = _window(rng, 5000)
    flags = [differs(*_window(rng, 20), n_b, mean_b, var_b) for _ in range(2000)]
    rate = sum(flags) / len(flags)
    assert 0.02 <= rate <= 0.09, rate  # a 95% interval: about 5% by chance


def test_a_real_shift_is_caught():
    rng = random.Random(11)
    n_b, mean_b, var_b = _window(rng, 5000)
    flags = [differs(*_window(rng, 50, shift=-0.2), n_b, mean_b, var_b) for _ in range(500)]
    assert sum(flags) / len(flags) > 0.95


def test_small_baselines_never_flag():
    assert differs(10, 0.1, 0.01, 1, 0.9, 0.0) is False
    assert differs(0, 0.1, None, 100, 0.9, 0.01) is False


def test_single_value_window_uses_the_baseline_spread():
    assert differs(1, 0.5, None, 100, 0.5, 0.04) is False
    assert differs(1, 0.0, None, 100, 0.9, 0.0001) is True
