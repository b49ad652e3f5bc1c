"""Schema of method=cascade (torch-free): the low-precision method and its precision
(the run's ``precision`` group), the high precision, the confidence signal, the
threshold or the target it is calibrated to, input routing, and the two scenarios."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from quantexp.config import ConfigError, MethodConfig

if TYPE_CHECKING:
    from quantexp.config import ExperimentConfig


class Signal(str, Enum):
    max_softmax = "max_softmax"  # top-1 probability
    margin = "margin"            # top-1 minus top-2 probability
    entropy = "entropy"          # 1 - H(p) / ln C


class HighPrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class TargetMetric(str, Enum):
    accuracy = "accuracy"    # cascade accuracy within target_drop points of fp32's
    agreement = "agreement"  # at most target_drop points of items answered unlike fp32


class Scenario(str, Enum):
    none = "none"
    drift = "drift"  # +scenario=drift
    slo = "slo"      # +scenario=slo


class SloPrecision(str, Enum):
    low = "low"          # the low-precision model alone
    cascade = "cascade"  # the cascade (low, escalating to high)
    high = "high"        # the high-precision model alone


def _in_range(value: float, low: float, high: float, key: str, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (
        low < value <= high if low_open else low <= value <= high)
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key} must be in {bracket}{low:g}, {high:g}], got {value}")


@dataclass
class RoutingConfig:
    """Input-characteristic routing: inputs unlike the calibration data go to high precision."""

    enabled: bool = True
    # images / rows: an input with more than this share of its values outside the range
    # the calibration set spans (what static int8 clips to) is escalated.
    outside_share: float = 0.0
    # text: longer than this quantile of the training texts' token counts ...
    length_quantile: float = 0.99
    # ... or more than this share of tokens never seen in the training split.
    oov_share: float = 0.2

    def validate(self) -> None:
        _in_range(self.outside_share, 0.0, 1.0, "method.routing.outside_share")
        _in_range(self.length_quantile, 0.0, 1.0, "method.routing.length_quantile", low_open=True)
        _in_range(self.oov_share, 0.0, 1.0, "method.routing.oov_share")


@dataclass
class DriftConfig:
    """The drifting stream of ``+scenario=drift``: the test set in order, repeated as
    needed, with noise growing linearly from 0 at the first window to ``noise_max``."""

    windows: int = 20
    window: int = 250  # items per window
    # images / rows: std of Gaussian noise on [0, 1] pixels (clipped back to [0, 1]);
    # text: share of tokens replaced by random vocabulary tokens.
    noise_max: float = 0.5
    shadow: float = 0.05  # share of each window also answered by fp32 (shadow traffic)
    target_agreement: float = 0.98  # what the controller keeps, estimated on the shadow items
    pool: int = 100  # most recent shadow items the controller re-solves the threshold on
    min_pool: int = 20  # the threshold moves once this many shadow items were seen
    # aim this many standard errors (of the pool's estimate) inside the target
    safety_sd: float = 1.0
    batch_size: int = 16

    def validate(self) -> None:
        for key in ("windows", "window", "pool", "min_pool", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.drift.{key} must be >= 1, got {getattr(self, key)}")
        _in_range(self.noise_max, 0.0, 1.0, "method.drift.noise_max")
        _in_range(self.shadow, 0.0, 1.0, "method.drift.shadow", low_open=True)
        _in_range(self.target_agreement, 0.0, 1.0, "method.drift.target_agreement", low_open=True)
        _in_range(self.safety_sd, 0.0, 10.0, "method.drift.safety_sd")


@dataclass
class SloConfig:
    """``+scenario=slo``: Poisson load at each rate in turn, served with dynamic batching;
    every static (batch size x precision) configuration and the controller see the
    same arrivals."""

    p99_ms: float = 50.0
    rates: list[float] = field(default_factory=lambda: [100.0, 200.0, 400.0, 800.0])  # items/s
    phase_s: float = 3.0  # seconds of arrivals per rate ...
    max_requests: int = 3000  # ... and at most this many requests per rate
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])
    precisions: list[SloPrecision] = field(
        default_factory=lambda: [SloPrecision.high, SloPrecision.cascade, SloPrecision.low])
    max_wait_ms: float = 5.0  # dynamic batching: a batch starts when full or its oldest waited this long
    interval_s: float = 0.5  # monitoring and control interval
    max_utilisation: float = 0.8  # the controller keeps predicted utilisation below this
    statics: bool = True  # also run every static configuration (the comparison)
    profile_calls: int = 10  # real calls per configuration to profile service times
    # each rate served this many times by every configuration and the controller, in
    # rotating order; a run meets the SLO at a rate when its median p99 does (one stall
    # of the host in one serving does not decide the comparison)
    repeats: int = 1

    def validate(self) -> None:
        if not (isinstance(self.p99_ms, (int, float)) and math.isfinite(self.p99_ms) and self.p99_ms > 0):
            raise ConfigError(f"method.slo.p99_ms must be > 0 and finite, got {self.p99_ms}")
        if not self.rates or any(not (math.isfinite(r) and r > 0) for r in self.rates):
            raise ConfigError(f"method.slo.rates must be a non-empty list of rates > 0 (items/s), got {self.rates}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"method.slo.batch_sizes must be a non-empty list of sizes >= 1, "
                              f"got {self.batch_sizes}")
        if not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise ConfigError("method.slo.precisions must be a non-empty list without repeats "
                              "(low, cascade, high)")
        for key in ("phase_s", "interval_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"method.slo.{key} must be > 0, got {getattr(self, key)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"method.slo.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_requests < 1 or self.profile_calls < 1 or self.repeats < 1:
            raise ConfigError("method.slo.max_requests, method.slo.profile_calls and method.slo.repeats "
                              "must be >= 1")
        _in_range(self.max_utilisation, 0.0, 1.0, "method.slo.max_utilisation", low_open=True)


@dataclass
class CascadeConfig(MethodConfig):
    """A low-precision model answers first; low-confidence or unusual inputs are re-run at
    high precision (quantexp/methods/cascade/)."""

    name: str = "cascade"
    implementation: ClassVar[str] = "quantexp.methods.cascade.method:Cascade"
    # The low-precision method, by its registered name; it runs at the run's precision.
    low: str = "ptq_static"
    # Fields of the low method's own schema (e.g. {threshold: 4.0} for bnb_int8).
    low_options: dict[str, Any] = field(default_factory=dict)
    high: HighPrecision = HighPrecision.fp32
    signal: Signal = Signal.max_softmax
    # Escalate when confidence < threshold; null: calibrated to target_drop on `holdout`.
    threshold: Optional[float] = None
    target_drop: float = 0.2  # points (0-100) vs fp32 on the held-out training items
    # agreement: at most target_drop points of items answered unlike fp32, which bounds
    # the accuracy drop item by item and is less noisy than a difference of accuracies.
    target_metric: TargetMetric = TargetMetric.agreement
    # Training items held out (disjoint from method.calibration) to calibrate the threshold.
    holdout: int = 1000
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    scenario: Scenario = Scenario.none
    drift: DriftConfig = field(default_factory=DriftConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    # The low precision is the run's precision group; fp32 is listed so that a cascade
    # of two fp32 models is refused by check() with its own message.
    precisions: ClassVar[frozenset[str]] = frozenset(
        {"fp32", "fp16", "bf16", "int8", "w4a8", "w4a8_tensor", "nf4", "fp4", "mixed"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})
    # TorchScript (or the pickle fallback): both models and the routing in one artifact.
    exporters: ClassVar[frozenset[str]] = frozenset({"none"})

    def validate(self) -> None:
        super().validate()
        if self.threshold is not None:
            _in_range(self.threshold, 0.0, 1.0, "method.threshold")
        _in_range(self.target_drop, 0.0, 100.0, "method.target_drop")
        if self.holdout < 1:
            raise ConfigError(f"method.holdout must be >= 1, got {self.holdout}")
        if self.low == "cascade":
            raise ConfigError("method.low=cascade: the low-precision model of a cascade cannot be a cascade")
        self.routing.validate()
        self.drift.validate()
        self.slo.validate()

    def training_items(self) -> int:
        return self.calibration.size + self.holdout

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        """The low method exists and accepts this run; the two models differ in precision."""
        low_schema = self.low_schema_class()
        precision, high = exp.precision.name, _value(self.high)
        if precision == high or (high == "fp16" and precision in ("fp32", "bf16")):
            raise ConfigError(f"a cascade needs a low precision below its high one: precision={precision} "
                              f"(the low model, method.low={self.low}) and method.high={high}")
        family = _value(exp.model.family)
        for what, value, allowed in (("model family", family, low_schema.families),
                                     ("precision", precision, low_schema.precisions),
                                     ("hardware", exp.hardware.name, low_schema.hardware),
                                     ("exporter", exp.exporter.name, low_schema.exporters)):
            if value not in allowed:
                raise ConfigError(f"method.low={self.low} cannot run with {what}={value}; valid {what} "
                                  f"values for {self.low}: {', '.join(sorted(allowed))}")
        self.low_config()  # its own validation, with low_options
        return {}

    def low_schema_class(self) -> type:
        from quantexp.config import schemas

        known = {k: v for k, v in schemas("method").items() if k != "cascade"}
        if self.low not in known:
            raise ConfigError(f"method.low={self.low} is not a method; valid: {', '.join(sorted(known))}")
        return known[self.low]

    def low_config(self) -> MethodConfig:
        """The low method's schema: its defaults, ``low_options``, this calibration block."""
        from omegaconf import OmegaConf

        schema = self.low_schema_class()
        options = {**dict(self.low_options), "calibration": dataclasses.asdict(self.calibration)}
        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), options))
        except ConfigError:
            raise
        except Exception as exc:  # an unknown key or a wrong type in low_options
            cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
            if cause is not None:
                raise cause from None
            raise ConfigError(f"method.low_options for {self.low}: {str(exc).splitlines()[0]}") from None


def _value(v: Any) -> str:
    return v.value if isinstance(v, Enum) else str(v)
