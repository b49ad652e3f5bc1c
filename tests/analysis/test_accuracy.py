"""Accuracy statistics: paired bootstrap CI and exact McNemar against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantexp.analysis.accuracy import (
    DeltaCI,
    accuracy,
    agreement,
    compare_predictions,
    mcnemar_exact,
    paired_bootstrap_delta,
)


def paired(
    b: int, c: int, both_right: int, both_wrong: int
) -> tuple[np.ndarray, np.ndarray]:
    """Correctness vectors with b (model right, ref wrong) and c (model wrong, ref right) items."""
    correct = np.array(
        [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    )
    correct_ref = np.array(
        [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    )
    return correct, correct_ref


def test_accuracy_and_agreement() -> None:
    labels = np.array([0, 1, 2, 2, 1])
    a = np.array([0, 1, 2, 0, 0])
    b = np.array([0, 1, 1, 0, 1])
    assert accuracy(a, labels) == pytest.approx(3 / 5)
    assert accuracy(b, labels) == pytest.approx(3 / 5)
    assert agreement(a, b) == pytest.approx(3 / 5)
    assert agreement(a, a) == 1.0


def test_identical_predictions() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=300)
    preds = np.where(rng.random(300) < 0.7, labels, (labels + 1) % 5)
    out = compare_predictions(preds, preds.copy(), labels)
    assert out["accuracy"] == out["accuracy_fp32"] == accuracy(preds, labels)
    assert out["accuracy_delta"] == 0.0
    assert out["accuracy_delta_ci_low"] == 0.0 and out["accuracy_delta_ci_high"] == 0.0
    assert out["agreement_fp32"] == 1.0
    assert out["mcnemar_p"] == 1.0
    assert out["mcnemar_b"] == out["mcnemar_c"] == 0.0
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (8, 2, 2 * (1 + 10 + 45) / 2**10),  # 2 * P(X <= 2), X ~ Bin(10, 1/2)
        (0, 5, 2 / 2**5),
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
        (3, 3, 1.0),
        (10, 0, 2 / 2**10),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_hand_values(b: int, c: int, p: float) -> None:
    correct, correct_ref = paired(b, c, both_right=6, both_wrong=4)
    res = mcnemar_exact(correct, correct_ref)
    assert (res.b, res.c) == (b, c)
    assert res.n_items == b + c + 10
    assert res.p_value == pytest.approx(p, rel=1e-12)


def test_compare_predictions_constructed_case() -> None:
    labels = np.zeros(20, dtype=int)
    correct, correct_ref = paired(8, 2, both_right=6, both_wrong=4)
    preds = np.where(correct, 0, 1)
    preds_ref = np.where(correct_ref, 0, 2)  # wrong in a different way than the model
    out = compare_predictions(preds, preds_ref, labels, ref_name="ref", n_boot=500)
    assert out["accuracy"] == pytest.approx(14 / 20)
    assert out["accuracy_ref"] == pytest.approx(8 / 20)
    assert out["accuracy_delta"] == pytest.approx(0.3)
    assert out["accuracy_delta_ci_low"] <= 0.3 <= out["accuracy_delta_ci_high"]
    assert out["agreement_ref"] == pytest.approx(6 / 20)  # only both-right items agree
    assert out["mcnemar_p"] == pytest.approx(112 / 1024)
    assert out["n_items"] == 20.0


def test_bootstrap_contains_estimate_narrows_and_matches_normal_theory() -> None:
    small = paired(30, 10, both_right=120, both_wrong=40)  # n = 200, delta = +0.1
    # n = 20,000 with the same delta; large enough to be bootstrapped in several chunks.
    big = tuple(np.tile(x, 100) for x in small)
    ci_s = paired_bootstrap_delta(*small, n_boot=2000, seed=0)
    ci_b = paired_bootstrap_delta(*big, n_boot=2000, seed=0)
    for ci, n in ((ci_s, 200), (ci_b, 20_000)):
        assert isinstance(ci, DeltaCI)
        assert ci.delta == pytest.approx(0.1)
        assert ci.low < ci.delta < ci.high
        assert ci.n_items == n and ci.n_boot == 2000 and ci.confidence == 0.95
        # The bootstrap sd of a mean of d in {-1,0,1} is sd(d)/sqrt(n); compare 95% widths.
        d = small[0].astype(float) - small[1].astype(float)
        normal_width = 2 * 1.959964 * d.std() / math.sqrt(n)
        assert (ci.high - ci.low) == pytest.approx(normal_width, rel=0.1)
    assert (ci_b.high - ci_b.low) < 0.2 * (ci_s.high - ci_s.low)  # ~ 1/sqrt(100)


def test_bootstrap_is_deterministic_per_seed_and_confidence_orders() -> None:
    x, y = paired(12, 7, both_right=50, both_wrong=31)
    a = paired_bootstrap_delta(x, y, seed=3)
    assert a == paired_bootstrap_delta(x, y, seed=3)
    assert a != paired_bootstrap_delta(x, y, seed=4)
    narrow = paired_bootstrap_delta(x, y, seed=3, confidence=0.5)
    assert a.low <= narrow.low <= narrow.high <= a.high
    # 0/1 integer inputs are the same as booleans.
    assert paired_bootstrap_delta(x.astype(int), y.astype(int), seed=3) == a


def test_invalid_inputs() -> None:
    x, y = paired(1, 1, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap_delta(x, y[:-1])
    with pytest.raises(ValueError, match="empty"):
        mcnemar_exact(np.array([], dtype=bool), np.array([], dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        mcnemar_exact(np.array([0, 2]), np.array([1, 0]))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_delta(x, y, confidence=1.0)
    with pytest.raises(ValueError, match="shape"):
        accuracy(np.zeros(3), np.zeros(4))
