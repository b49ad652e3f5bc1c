"""Did a candidate run regress against a baseline run? One verdict per metric, each from
a stated test and a minimum effect, so that reruns of the same configuration pass and
planted regressions are caught.

- accuracy: paired over the same test items (both runs' per-item predictions): the
  paired bootstrap CI of the accuracy change and McNemar's exact test. Regressed when
  the whole CI lies below ``-tolerance_pts`` (and the point estimate too).
- latency: the candidate artifact's raw per-call samples of both runs; the ratio of
  medians (candidate / baseline) with a percentile bootstrap CI, each run resampled on
  its own. Regressed when the whole CI lies above 1 + min_effect: the slowdown is
  significantly larger than the minimum effect, not merely significant. Two processes
  on one machine drift apart by several percent (between-process effects that one
  run's CI cannot see), hence the margin; a different machine makes it meaningless
  (use speedup there).
- speedup: the within-run ratio (own fp32 / candidate, timed interleaved), compared
  between runs by resampling each run's interleaved rounds. Regressed when the whole
  CI of (candidate speed-up / baseline speed-up) lies below 1 - min_effect. A slower
  machine slows fp32 and the candidate alike, so this is the one to gate CI with.

The same margin rule, mirrored, says "improved".

Stdlib + numpy; McNemar through ``analysis.accuracy`` (scipy, imported lazily).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from quantexp.analysis.accuracy import mcnemar_exact, paired_bootstrap_delta

REGRESSED, IMPROVED, UNCHANGED, NOT_MEASURED = "regressed", "improved", "unchanged", "not measured"


@dataclass(frozen=True)
class Verdict:
    metric: str  # accuracy / latency / speedup
    status: str  # REGRESSED, IMPROVED, UNCHANGED or NOT_MEASURED
    estimate: float | None  # accuracy: change in points; latency, speedup: candidate / baseline
    ci_low: float | None
    ci_high: float | None
    threshold: float  # the tolerance (points) or minimum effect (fraction) that was applied
    test: str  # what decided, in words
    detail: str  # one line for the terminal
    p_value: float | None = None

    @property
    def regressed(self) -> bool:
        return self.status == REGRESSED

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def accuracy_verdict(correct_base: np.ndarray, correct_cand: np.ndarray, *, tolerance_pts: float = 0.0,
                     n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Verdict:
    """Candidate minus baseline accuracy over the same items, in points."""
    ci = paired_bootstrap_delta(correct_cand, correct_base, n_boot=n_boot, confidence=confidence, seed=seed)
    mc = mcnemar_exact(correct_cand, correct_base)
    delta, low, high = 100 * ci.delta, 100 * ci.low, 100 * ci.high
    if high < -tolerance_pts:
        status = REGRESSED
    elif low > tolerance_pts:
        status = IMPROVED
    else:
        status = UNCHANGED
    detail = (f"accuracy {delta:+.2f} pts [{low:+.2f}, {high:+.2f}] over {ci.n_items} paired items, "
              f"McNemar p={mc.p_value:.3g} ({mc.c} newly wrong, {mc.b} newly right)")
    return Verdict("accuracy", status, delta, low, high, tolerance_pts,
                   f"paired bootstrap ({n_boot} resamples, {confidence:.0%} CI) beyond a tolerance of "
                   f"{tolerance_pts} pts; McNemar exact", detail, mc.p_value)


def _bootstrap_ratio(num: np.ndarray, den: np.ndarray, statistic, n_boot: int, confidence: float,
                     seed: int) -> tuple[float, float]:
    """Percentile CI of statistic(num) / statistic(den), the two resampled independently."""
    rng = np.random.default_rng(seed)
    a = statistic(num[rng.integers(0, len(num), size=(n_boot, len(num)))])
    b = statistic(den[rng.integers(0, len(den), size=(n_boot, len(den)))])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(a / b, [alpha, 1 - alpha])
    return float(low), float(high)


def latency_verdict(base_ms: np.ndarray, cand_ms: np.ndarray, *, min_effect: float = 0.10,
                    n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Verdict:
    """Candidate / baseline median per-call latency (> 1: slower), from raw samples."""
    base, cand = np.asarray(base_ms, float), np.asarray(cand_ms, float)
    if base.size == 0 or cand.size == 0:
        return Verdict("latency", NOT_MEASURED, None, None, None, min_effect, "-",
                       "latency: not measured in " + ("the baseline" if base.size == 0 else "the candidate"))
    ratio = float(np.median(cand) / np.median(base))
    low, high = _bootstrap_ratio(cand, base, lambda x: np.median(x, axis=1), n_boot, confidence, seed)
    if low > 1 + min_effect:
        status = REGRESSED
    elif high < 1 - min_effect:
        status = IMPROVED
    else:
        status = UNCHANGED
    detail = (f"p50 latency x{ratio:.3f} [{low:.3f}, {high:.3f}] ({np.median(base):.3f} -> "
              f"{np.median(cand):.3f} ms, {base.size} vs {cand.size} calls)")
    return Verdict("latency", status, ratio, low, high, min_effect,
                   f"bootstrap of the ratio of medians of raw calls ({n_boot} resamples, {confidence:.0%} "
                   f"CI) wholly beyond a minimum effect of {min_effect:.0%}", detail)


def speedup_verdict(base_rounds: tuple[np.ndarray, np.ndarray], cand_rounds: tuple[np.ndarray, np.ndarray], *,
                    min_effect: float = 0.05, n_boot: int = 2000, confidence: float = 0.95,
                    seed: int = 0) -> Verdict:
    """Candidate speed-up / baseline speed-up (< 1: the candidate lost speed-up).

    Each run is given as (reference round medians, candidate round medians) of its
    interleaved timing; a resample draws rounds with replacement within each run,
    keeping a round's two medians together."""
    def speedup(rounds: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.median(rounds[0]) / np.median(rounds[1]))

    def resampled(rounds: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        ref, cand = np.asarray(rounds[0], float), np.asarray(rounds[1], float)
        idx = rng.integers(0, len(ref), size=(n_boot, len(ref)))
        return np.median(ref[idx], axis=1) / np.median(cand[idx], axis=1)

    if len(base_rounds[0]) == 0 or len(cand_rounds[0]) == 0:
        return Verdict("speedup", NOT_MEASURED, None, None, None, min_effect, "-",
                       "speed-up: not timed interleaved in " + ("the baseline" if len(base_rounds[0]) == 0
                                                                else "the candidate"))
    rng = np.random.default_rng(seed)
    ratios = resampled(cand_rounds, rng) / resampled(base_rounds, rng)
    alpha = (1 - confidence) / 2
    low, high = (float(v) for v in np.quantile(ratios, [alpha, 1 - alpha]))
    base, cand = speedup(base_rounds), speedup(cand_rounds)
    ratio = cand / base
    if high < 1 - min_effect:
        status = REGRESSED
    elif low > 1 + min_effect:
        status = IMPROVED
    else:
        status = UNCHANGED
    detail = (f"speed-up vs own fp32 {base:.3f}x -> {cand:.3f}x (x{ratio:.3f} [{low:.3f}, {high:.3f}], "
              f"{len(base_rounds[0])} vs {len(cand_rounds[0])} interleaved rounds)")
    return Verdict("speedup", status, ratio, low, high, min_effect,
                   f"bootstrap over interleaved rounds of each run ({n_boot} resamples, {confidence:.0%} CI) "
                   f"wholly beyond a minimum effect of {min_effect:.0%}", detail)


__all__ = ["IMPROVED", "NOT_MEASURED", "REGRESSED", "UNCHANGED", "Verdict", "accuracy_verdict",
           "latency_verdict", "speedup_verdict"]
