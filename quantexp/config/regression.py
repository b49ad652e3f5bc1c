"""``RegressionConfig``: the thresholds of ``quantexp compare`` (and the CI performance
check), read from ``conf/compare.yaml`` and overridable with ``--set key=value``.
Validated on construction, like every schema here."""

from __future__ import annotations

from dataclasses import dataclass, field

from quantexp.config.errors import ConfigError

METRICS = ("accuracy", "latency", "speedup")


@dataclass
class RegressionConfig:
    # Accuracy: regressed when the paired CI of the change lies wholly below -tolerance (points).
    accuracy_tolerance_pts: float = 0.0
    # Latency (candidate artifact, raw samples of both runs): regressed when the whole CI
    # of the ratio of medians lies above 1 + this fraction. Two processes on one machine
    # differ by several percent (reruns on the 2-core CI VM: up to 13 % at p50), hence
    # the margin.
    latency_min_effect: float = 0.12
    # Speed-up vs the run's own fp32 (interleaved rounds): regressed when the whole CI of
    # candidate / baseline speed-up lies below 1 - this fraction.
    speedup_min_effect: float = 0.05
    # Which verdicts make the command exit non-zero (a "regressed" in any of them).
    fail_on: list[str] = field(default_factory=lambda: list(METRICS))
    bootstrap: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.accuracy_tolerance_pts < 0:
            raise ConfigError(f"accuracy_tolerance_pts must be >= 0, got {self.accuracy_tolerance_pts}")
        for name in ("latency_min_effect", "speedup_min_effect"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} is a fraction in [0, 1), got {getattr(self, name)}")
        unknown = [m for m in self.fail_on if m not in METRICS]
        if unknown:
            raise ConfigError(f"fail_on: unknown metric {unknown[0]!r}; valid: {', '.join(METRICS)}")
        if self.bootstrap < 100:
            raise ConfigError(f"bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")


__all__ = ["METRICS", "RegressionConfig"]
