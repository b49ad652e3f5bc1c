"""Cost-benefit ranking: the cheapest option whose prediction meets the constraints first
(cost: what applying it needs - weights only < calibration data < training - then its
quantize time), ties broken by the larger predicted speed-up; then the options that do
not meet them, the closest first. Each option says why it meets or misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from quantexp.recommend.predict import Prediction
from quantexp.recommend.rules import NEEDS, prior_for

MIN_GAIN = 1.05  # a speed-up above this, or a size ratio below 1/this, counts as a gain


@dataclass
class Constraints:
    max_accuracy_drop: float | None = 1.0  # points
    max_latency_ms: float | None = None  # p50 of one batch, on the target
    max_size_mb: float | None = None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in vars(self).items() if v is not None]
        return ", ".join(parts) or "no constraints"


@dataclass
class Option:
    prediction: Prediction
    needs: str
    latency_ms: float | None  # predicted: the model's fp32 latency on the target / speed-up
    size_mb: float | None
    meets: bool
    why: list[str] = field(default_factory=list)
    misses_by: float = 0.0  # how far past the constraints, in units of their own scale

    @property
    def label(self) -> str:
        p = self.prediction
        return f"{p.method}@{p.precision} {p.exporter}/{p.hardware}"


def evaluate(prediction: Prediction, family: str, constraints: Constraints, fp32_latency_ms: float | None,
             fp32_size_mb: float | None) -> Option:
    p = prediction
    needs = prior_for(p.method, p.precision, family, p.hardware).needs
    latency = fp32_latency_ms / p.speedup.value if fp32_latency_ms and p.speedup.value > 0 else None
    size = fp32_size_mb * p.size_ratio.value if fp32_size_mb else None
    why, miss = [], 0.0
    checks = [("drop", p.drop.value, constraints.max_accuracy_drop, "pts"),
              ("p50", latency, constraints.max_latency_ms, "ms"), ("size", size, constraints.max_size_mb, "MB")]
    for name, value, limit, unit in checks:
        if limit is None:
            continue
        if value is None:
            why.append(f"{name}: no fp32 measurement of this model on the target to predict it from")
            miss += 1.0
        elif value <= limit:
            why.append(f"{name} {value:.2f} {unit} <= {limit}")
        else:
            why.append(f"{name} {value:.2f} {unit} > {limit}")
            miss += (value - limit) / max(abs(limit), 1e-9) if name != "drop" else (value - limit)
    # an option must buy something: speed or size (a method that changes neither is no option)
    if p.speedup.value <= MIN_GAIN and p.size_ratio.value >= 1 / MIN_GAIN:
        why.append(f"buys nothing: speed-up {p.speedup.value:.2f}x, size x{p.size_ratio.value:.2f}")
        miss += MIN_GAIN - p.speedup.value
    return Option(p, needs, latency, size, meets=miss == 0.0, why=why, misses_by=miss)


def rank(options: Sequence[Option]) -> list[Option]:
    def cost(o: Option) -> tuple:
        return (NEEDS.index(o.needs), -o.prediction.speedup.value, o.prediction.drop.value)

    meeting = sorted((o for o in options if o.meets), key=cost)
    others = sorted((o for o in options if not o.meets), key=lambda o: (o.misses_by, cost(o)))
    return meeting + others


__all__ = ["Constraints", "Option", "evaluate", "rank"]
