"""The feedback loop of adaptive precision: keep a cascade's agreement with the fp32
model at a target while the input distribution drifts.

In production no labels arrive, but a sampled fraction of traffic can be sent to the
fp32 model as well ("shadow" traffic, answered from the cascade as usual). For each
shadow item the controller knows the low-precision model's confidence and whether its
answer agreed with fp32, which is enough to know what *any* threshold would have
given on that item: escalated items take the high-precision answer (which agrees
when the high model is the fp32 model), the others the low-precision one. So after
every window the controller re-solves the threshold on its most recent shadow items
(``calibrate_threshold``, the same rule as the initial calibration) instead of
nudging it by a fixed step: it moves up when drift makes the low-precision model
disagree more, and back down when the stream gets easier. It solves for the target
less ``safety_sd`` standard errors of the pool's estimate: aimed exactly at the
target, about half the windows would land just below it.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from quantexp.serving.threshold import calibrate_threshold, outcome_at


class ShadowController:
    """Escalation threshold kept at ``target_agreement`` from the last ``pool`` shadow
    items; the threshold stays where it is until ``min_items`` have been seen."""

    def __init__(self, threshold: float, target_agreement: float, pool: int, min_items: int = 20,
                 safety_sd: float = 1.0):
        if not 0.0 < target_agreement <= 1.0:
            raise ValueError(f"target_agreement must be in (0, 1], got {target_agreement}")
        if pool < 1 or min_items < 1:
            raise ValueError(f"pool and min_items must be >= 1, got {pool}, {min_items}")
        self.threshold = float(threshold)
        self.target_agreement = float(target_agreement)
        self.min_items = min(min_items, pool)
        if safety_sd < 0:
            raise ValueError(f"safety_sd must be >= 0, got {safety_sd}")
        self.safety_sd = float(safety_sd)
        # (confidence, low agrees with fp32, high agrees with fp32, forced by the router)
        self._pool: deque[tuple[float, bool, bool, bool]] = deque(maxlen=pool)

    def __len__(self) -> int:
        return len(self._pool)

    def observe(self, conf: np.ndarray, low_agrees: np.ndarray, high_agrees: np.ndarray | None = None,
                forced: np.ndarray | None = None) -> None:
        """Add shadow items. ``high_agrees`` defaults to all True (the high-precision
        model is the fp32 model); ``forced``: items the router sent up regardless."""
        n = len(conf)
        high = np.ones(n, dtype=bool) if high_agrees is None else np.asarray(high_agrees, dtype=bool)
        forced_ = np.zeros(n, dtype=bool) if forced is None else np.asarray(forced, dtype=bool)
        for row in zip(np.asarray(conf, dtype=float), np.asarray(low_agrees, dtype=bool), high, forced_):
            self._pool.append(tuple(row))  # type: ignore[arg-type]

    def _arrays(self) -> tuple[np.ndarray, ...]:
        pool = np.asarray(self._pool, dtype=np.float64).reshape(-1, 4)
        return pool[:, 0], pool[:, 1] > 0.5, pool[:, 2] > 0.5, pool[:, 3] > 0.5

    def estimate(self, threshold: float | None = None) -> float | None:
        """Estimated agreement with fp32 at ``threshold`` (default: the current one) on the
        shadow pool; None before any shadow item was seen."""
        if not self._pool:
            return None
        conf, low, high, forced = self._arrays()
        return outcome_at(self.threshold if threshold is None else threshold, conf, low, high, forced)[0]

    def solve_points(self) -> float:
        """The disagreement (points) the threshold is solved for: the target's, less
        ``safety_sd`` standard errors of a proportion estimated on the pool, so that a
        window at the target is not a coin flip between meeting and missing it."""
        allowed = 1.0 - self.target_agreement
        margin = self.safety_sd * math.sqrt(allowed * (1.0 - allowed) / max(len(self._pool), 1))
        return 100.0 * max(allowed - margin, 0.0)

    def update(self) -> float:
        """Re-solve the threshold on the pool; returns the threshold now in force."""
        if len(self._pool) >= self.min_items:
            conf, low, high, forced = self._arrays()
            cal = calibrate_threshold(conf, low, high, reference_score=1.0, target_points=self.solve_points(),
                                      forced=forced)
            self.threshold = cal.threshold
        return self.threshold


__all__ = ["ShadowController"]
