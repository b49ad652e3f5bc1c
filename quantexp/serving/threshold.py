"""Confidence signals of a classifier's logits and the escalation threshold of a cascade.

A cascade answers with its low-precision model and re-runs at high precision every
input whose confidence is below a threshold (plus any input a router forces up). The
threshold is calibrated on labelled items that are not test items: the smallest one
whose estimated loss vs the reference stays within the target, both there and at every
larger threshold (a dip of the loss curve that happens to meet the target once is not
trusted: on a few hundred items such dips are noise).

Confidence is scaled to [0, 1], larger = more confident, for every signal:
``max_softmax`` (the top probability), ``margin`` (top-1 minus top-2 probability) and
``entropy`` (1 - H(p) / ln C).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SIGNALS = ("max_softmax", "margin", "entropy")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confidence(logits: np.ndarray, signal: str) -> np.ndarray:
    """Per-row confidence in [0, 1] of ``logits`` ([N, C]) by ``signal``."""
    p = softmax(logits)
    if signal == "max_softmax":
        return p.max(axis=-1)
    if signal == "margin":
        top2 = np.sort(p, axis=-1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if signal == "entropy":
        entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)
        return 1.0 - entropy / np.log(p.shape[-1])
    raise ValueError(f"unknown confidence signal {signal!r}; valid: {', '.join(SIGNALS)}")


@dataclass(frozen=True)
class Calibration:
    """The threshold chosen and what it gave on the calibration items."""

    threshold: float
    target_points: float
    met: bool  # False: even escalating every item stays beyond the target
    n_items: int
    escalated_share: float  # by confidence or router, at the threshold
    forced_share: float  # by the router alone
    reference_score: float  # the reference's accuracy (or 1.0 when scoring agreement)
    low_score: float  # the low-precision model alone
    cascade_score: float  # the cascade at the threshold
    drop_points: float  # 100 * (reference_score - cascade_score)

    def to_dict(self) -> dict[str, float | bool | int]:
        return asdict(self)


def outcome_at(threshold: float, conf: np.ndarray, low_ok: np.ndarray, high_ok: np.ndarray,
               forced: np.ndarray | None = None) -> tuple[float, float]:
    """(cascade score, escalated share) at ``threshold``: an escalated item (confidence
    below it, or forced) takes the high-precision outcome, the others the low one."""
    escalated = np.asarray(conf) < threshold
    if forced is not None:
        escalated = escalated | np.asarray(forced, dtype=bool)
    score = np.where(escalated, np.asarray(high_ok, dtype=bool), np.asarray(low_ok, dtype=bool)).mean()
    return float(score), float(escalated.mean())


def calibrate_threshold(conf: np.ndarray, low_ok: np.ndarray, high_ok: np.ndarray, *,
                        reference_score: float, target_points: float,
                        forced: np.ndarray | None = None) -> Calibration:
    """The smallest threshold whose cascade score is within ``target_points`` (0-100) of
    ``reference_score`` at it and at every larger threshold.

    ``low_ok`` / ``high_ok``: per item, whether the low / high-precision answer counts as
    right (equals the label when scoring accuracy, or the reference's answer when
    scoring agreement, with ``reference_score`` 1.0). ``forced``: items a router sends
    up whatever their confidence. Thresholds are the observed confidence values (an
    item escalates when its confidence is strictly below), 0 (none by confidence) and
    just above the largest (all of them).
    """
    conf = np.asarray(conf, dtype=np.float64)
    low_ok, high_ok = np.asarray(low_ok, dtype=bool), np.asarray(high_ok, dtype=bool)
    n = len(conf)
    if n == 0 or len(low_ok) != n or len(high_ok) != n:
        raise ValueError(f"need one confidence, low and high outcome per item, got {n}, {len(low_ok)}, "
                         f"{len(high_ok)}")
    if not 0.0 <= target_points <= 100.0:
        raise ValueError(f"target_points must be in [0, 100], got {target_points}")
    forced = np.zeros(n, dtype=bool) if forced is None else np.asarray(forced, dtype=bool)
    free = ~forced
    order = np.argsort(conf[free], kind="stable")
    c_sorted = conf[free][order]
    # Escalating an item changes its outcome from low_ok to high_ok.
    gain = (high_ok[free].astype(np.int64) - low_ok[free].astype(np.int64))[order]
    base = int(low_ok[free].sum() + high_ok[forced].sum())
    top = float(np.nextafter(c_sorted[-1], np.inf)) if len(c_sorted) else 0.0
    candidates = np.unique(np.concatenate([[0.0], c_sorted, [top]]))
    k = np.searchsorted(c_sorted, candidates, side="left")  # items escalated by confidence
    cumulative = np.concatenate([[0], np.cumsum(gain)])
    scores = (base + cumulative[k]) / n
    drops = 100.0 * (reference_score - scores)
    ok = drops <= target_points + 1e-9
    if ok[-1]:
        bad = np.flatnonzero(~ok)
        j = int(bad[-1]) + 1 if len(bad) else 0
        met = True
    else:  # not even the high-precision model everywhere meets it: escalate everything
        j, met = len(candidates) - 1, False
    escalated_share = (int(k[j]) + int(forced.sum())) / n
    return Calibration(
        threshold=float(candidates[j]), target_points=float(target_points), met=met, n_items=n,
        escalated_share=escalated_share, forced_share=float(forced.mean()),
        reference_score=float(reference_score), low_score=float(low_ok.mean()),
        cascade_score=float(scores[j]), drop_points=float(drops[j]))


__all__ = ["SIGNALS", "Calibration", "calibrate_threshold", "confidence", "outcome_at", "softmax"]
