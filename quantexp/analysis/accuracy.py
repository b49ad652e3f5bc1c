"""Accuracy comparison of a quantized model against its reference on the same test items.

Owns the statistics that say whether a quantized model's accuracy change is real: a paired
bootstrap confidence interval of the accuracy delta and an exact McNemar test on the
discordant items. Both are paired because the two models see the same items; an unpaired
comparison would drown a small delta in between-item variance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

# Bound the (resamples x items) index matrix of one bootstrap chunk (~32 MiB of int64).
_MAX_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class DeltaCI:
    """Accuracy delta (model minus reference) with a percentile bootstrap interval."""

    delta: float
    low: float
    high: float
    confidence: float
    n_boot: int
    n_items: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test. b: model right & reference wrong; c: model wrong & reference right."""

    b: int
    c: int
    p_value: float
    n_items: int


def _same_shape_1d(
    a: ArrayLike, b: ArrayLike, names: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} differ in shape: {x.shape} vs {y.shape}"
        )
    if x.size == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    return x.ravel(), y.ravel()


def _as_bool(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == bool:
        return x
    if not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name} must be boolean (or 0/1) per item")
    return x.astype(bool)


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of items where the prediction equals the label."""
    p, y = _same_shape_1d(preds, labels, ("preds", "labels"))
    return float(np.mean(p == y))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaNs for n <= 0). Closed
    form, the same numbers as scipy's ``binomtest(...).proportion_ci(method="wilson")``
    (checked in the tests); importing scipy.stats would cost a report seconds."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def agreement(preds_a: ArrayLike, preds_b: ArrayLike) -> float:
    """Fraction of items where two models predict the same thing (label-free)."""
    a, b = _same_shape_1d(preds_a, preds_b, ("preds_a", "preds_b"))
    return float(np.mean(a == b))


def paired_bootstrap_delta(
    correct: ArrayLike,
    correct_ref: ArrayLike,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> DeltaCI:
    """Percentile bootstrap CI of mean(correct) - mean(correct_ref) over the same items.

    Items are resampled with replacement and the *same* indices are used for both models,
    which keeps the pairing. Deterministic for a given seed and input.
    """
    x, y = _same_shape_1d(correct, correct_ref, ("correct", "correct_ref"))
    x, y = _as_bool(x, "correct"), _as_bool(y, "correct_ref")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    # Per-item difference in {-1, 0, 1}: the mean of a resample is that resample's delta.
    diff = x.astype(np.int8) - y.astype(np.int8)
    n = diff.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    deltas = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        deltas[start:stop] = diff[idx].mean(axis=1, dtype=np.float64)

    alpha = 1.0 - confidence
    low, high = np.percentile(
        deltas, [100 * alpha / 2, 100 * (1 - alpha / 2)], method="linear"
    )
    return DeltaCI(
        delta=float(diff.mean(dtype=np.float64)),
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_boot=n_boot,
        n_items=n,
    )


def mcnemar_exact(correct: ArrayLike, correct_ref: ArrayLike) -> McNemarResult:
    """Exact two-sided McNemar test: binomial test of b vs c with p = 0.5."""
    x, y = _same_shape_1d(correct, correct_ref, ("correct", "correct_ref"))
    x, y = _as_bool(x, "correct"), _as_bool(y, "correct_ref")
    b = int(np.count_nonzero(x & ~y))
    c = int(np.count_nonzero(~x & y))
    if b + c == 0:
        p = 1.0  # no discordant items: no evidence of any difference
    else:
        from scipy.stats import binomtest  # scipy is slow to import; only needed here

        p = float(binomtest(b, b + c, 0.5).pvalue)
    return McNemarResult(b=b, c=c, p_value=p, n_items=int(x.size))


def compare_predictions(
    preds: ArrayLike,
    preds_ref: ArrayLike,
    labels: ArrayLike,
    *,
    ref_name: str = "fp32",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Flat metrics dict comparing a model's predictions with the reference model's.

    Keys: accuracy, accuracy_<ref>, accuracy_delta, accuracy_delta_ci_low,
    accuracy_delta_ci_high, agreement_<ref>, mcnemar_p, mcnemar_b, mcnemar_c, n_items.
    """
    p, y = _same_shape_1d(preds, labels, ("preds", "labels"))
    r, _ = _same_shape_1d(preds_ref, labels, ("preds_ref", "labels"))
    correct, correct_ref = p == y, r == y
    ci = paired_bootstrap_delta(
        correct, correct_ref, n_boot=n_boot, confidence=confidence, seed=seed
    )
    mc = mcnemar_exact(correct, correct_ref)
    return {
        "accuracy": float(correct.mean()),
        f"accuracy_{ref_name}": float(correct_ref.mean()),
        "accuracy_delta": ci.delta,
        "accuracy_delta_ci_low": ci.low,
        "accuracy_delta_ci_high": ci.high,
        f"agreement_{ref_name}": float(np.mean(p == r)),
        "mcnemar_p": mc.p_value,
        "mcnemar_b": float(mc.b),
        "mcnemar_c": float(mc.c),
        "n_items": float(mc.n_items),
    }
