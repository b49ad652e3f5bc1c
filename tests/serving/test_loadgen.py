"""The load generator's arrival statistics: Poisson counts, exponential gaps, its bounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from quantexp.serving.loadgen import phases, poisson_arrivals


@pytest.mark.parametrize("rate", [5.0, 200.0, 3000.0])
def test_gaps_are_exponential_with_mean_one_over_rate(rate):
    t = poisson_arrivals(rate, duration_s=2000.0 / rate, max_requests=10**6, rng=np.random.default_rng(1))
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # ... and not anything else: a uniform of the same mean is rejected
    assert stats.kstest(gaps, "uniform", args=(0, 2 / rate)).pvalue < 1e-6
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.1)


def test_counts_per_second_are_poisson():
    rate = 40.0
    t = poisson_arrivals(rate, duration_s=500.0, max_requests=10**6, rng=np.random.default_rng(2))
    counts = np.bincount(t.astype(int), minlength=500)
    assert counts.mean() == pytest.approx(rate, rel=0.05)
    # index of dispersion: (n-1) var/mean ~ chi2(n-1) for Poisson counts
    dispersion = (len(counts) - 1) * counts.var(ddof=1) / counts.mean()
    p = stats.chi2.cdf(dispersion, len(counts) - 1)
    assert 0.005 < p < 0.995
    # Poisson pmf against the histogram of counts
    observed = np.bincount(counts, minlength=80)[20:60]
    expected = stats.poisson.pmf(np.arange(20, 60), rate) * len(counts)
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 0.001


def test_arrivals_are_bounded_in_time_and_count_and_sorted():
    t = poisson_arrivals(1000.0, duration_s=0.5, max_requests=10**6, rng=np.random.default_rng(3))
    assert t.max() < 0.5 and np.all(np.diff(t) > 0) and 400 < len(t) < 600
    capped = poisson_arrivals(1000.0, duration_s=10.0, max_requests=123, rng=np.random.default_rng(3))
    assert len(capped) == 123 and capped[-1] < 0.5


def test_phases_are_seeded_and_independent():
    a, b = phases([100.0, 100.0], 1.0, 1000, seed=7), phases([100.0, 100.0], 1.0, 1000, seed=7)
    assert np.array_equal(a[0].arrivals_s, b[0].arrivals_s)
    assert not np.array_equal(a[0].arrivals_s, a[1].arrivals_s)
    assert a[0].rate == 100.0 and 0 < a[0].duration_s < 1.0


@pytest.mark.parametrize("args", [(0.0, 1.0, 10), (float("inf"), 1.0, 10), (1.0, 0.0, 10), (1.0, 1.0, 0)])
def test_bad_bounds_are_refused(args):
    with pytest.raises(ValueError):
        poisson_arrivals(*args, rng=np.random.default_rng(0))
