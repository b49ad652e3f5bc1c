"""The regression statistics on inputs with a known answer: identical runs are
unchanged, planted accuracy drops and slowdowns are caught, noise alone is not."""

from __future__ import annotations

import numpy as np
import pytest

from quantexp.analysis.regression import (
    IMPROVED,
    NOT_MEASURED,
    REGRESSED,
    UNCHANGED,
    accuracy_verdict,
    latency_verdict,
    speedup_verdict,
)

rng = np.random.default_rng(0)
CORRECT = rng.random(2000) < 0.74  # a 2,000-item test set at 74 % (MiniLM's size and accuracy)


def flipped(correct: np.ndarray, n: int, to: bool = False) -> np.ndarray:
    out = correct.copy()
    out[np.flatnonzero(correct != to)[:n]] = to
    return out


def test_identical_predictions_are_unchanged():
    v = accuracy_verdict(CORRECT, CORRECT.copy())
    assert v.status == UNCHANGED and v.estimate == 0 and v.p_value == 1.0


def test_a_planted_one_point_drop_is_a_regression():
    v = accuracy_verdict(CORRECT, flipped(CORRECT, 20))  # 20 of 2,000 items: 1 point
    assert v.status == REGRESSED and v.estimate == pytest.approx(-1.0) and v.ci_high < 0 and v.p_value < 1e-4


def test_the_tolerance_absorbs_a_small_drop_and_gains_are_improvements():
    assert accuracy_verdict(CORRECT, flipped(CORRECT, 20), tolerance_pts=1.5).status == UNCHANGED
    assert accuracy_verdict(CORRECT, flipped(CORRECT, 40, to=True)).status == IMPROVED


def test_churn_without_a_net_change_is_unchanged():
    churned = flipped(flipped(CORRECT, 15), 15, to=True)
    assert accuracy_verdict(CORRECT, churned).status == UNCHANGED


def samples(median_ms: float, n: int = 400, cv: float = 0.25, seed: int = 1) -> np.ndarray:
    return median_ms * np.random.default_rng(seed).lognormal(0.0, cv, n)


def test_latency_noise_alone_is_unchanged_and_a_planted_slowdown_is_caught():
    assert latency_verdict(samples(2.0, seed=1), samples(2.0, seed=2)).status == UNCHANGED
    slow = latency_verdict(samples(2.0, seed=1), samples(2.4, seed=2))  # 20 % slower
    assert slow.status == REGRESSED and slow.estimate == pytest.approx(1.2, rel=0.05)
    # significant but below the minimum effect: unchanged
    assert latency_verdict(samples(2.0, n=5000, seed=1), samples(2.1, n=5000, seed=2)).status == UNCHANGED
    # past the minimum effect at the point, but the CI reaches below it: a rerun's drift
    # looks like this (13 % slower on 30 calls), so it is not called a regression
    drift = latency_verdict(samples(2.0, n=30, seed=1), samples(2.26, n=30, seed=2), min_effect=0.10)
    assert drift.estimate > 1.10 and drift.ci_low < 1.10 and drift.status == UNCHANGED
    assert latency_verdict(samples(2.0, seed=1), samples(1.5, seed=2)).status == IMPROVED
    assert latency_verdict(samples(2.0), np.array([])).status == NOT_MEASURED


def rounds(speedup: float, n: int = 40, seed: int = 0, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved round medians: the machine's speed drifts by round, both sides alike."""
    g = np.random.default_rng(seed)
    machine = 1.0 + drift * np.arange(n) / n
    ref = 2.0 * machine * g.lognormal(0, 0.05, n)
    return ref, ref / speedup * g.lognormal(0, 0.05, n)


def test_speedup_ignores_a_slower_machine_but_catches_a_slower_candidate():
    base = rounds(1.5, seed=1)
    slower_machine = tuple(r * 1.4 for r in rounds(1.5, seed=2))  # everything 40 % slower
    assert speedup_verdict(base, slower_machine).status == UNCHANGED
    assert speedup_verdict(base, rounds(1.5, seed=3, drift=0.5)).status == UNCHANGED
    lost = speedup_verdict(base, rounds(1.2, seed=4))  # the candidate lost 20 % of its speed-up
    assert lost.status == REGRESSED and lost.estimate == pytest.approx(0.8, rel=0.05)
    assert speedup_verdict(base, (np.array([]), np.array([]))).status == NOT_MEASURED
