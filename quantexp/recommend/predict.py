"""Predicted outcome of a recipe (method, precision, exporter, hardware) on a model, from
measured history: the runs of the same recipe on the most similar models (nearest
neighbours over the architecture features, each feature scaled by its spread across the
history's models), blended with the rule prior (``rules.py``) in proportion to how
much history there is; the size, where the model's family has two or more sizes measured
with the recipe, from a line through their quantized sizes (``size_by_family_fit``).
A model that was itself measured with the recipe is predicted by its measurement
(``measured``). Every prediction says what backed it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from quantexp.architecture.features import FEATURES
from quantexp.recommend.history import Record
from quantexp.recommend.rules import prior_for

NEIGHBOURS = 3


@dataclass
class Estimate:
    value: float
    sd: float

    def describe(self, spec: str = ".2f", unit: str = "") -> str:
        return f"{self.value:{spec}}{unit} ± {self.sd:{spec}}"


@dataclass
class Prediction:
    method: str
    precision: str
    exporter: str
    hardware: str
    drop: Estimate
    speedup: Estimate
    size_ratio: Estimate
    quantize_s: float | None
    support: int  # measured runs of this recipe the prediction used
    measured: bool = False  # this very model was measured with this recipe
    neighbours: list[str] = field(default_factory=list)  # "model (distance)"
    drivers: list[str] = field(default_factory=list)  # the features that made the neighbours near

    @property
    def recipe(self) -> tuple[str, str, str, str]:
        return (self.method, self.precision, self.exporter, self.hardware)


def feature_scales(history: Sequence[Record]) -> dict[str, float]:
    """Each feature's spread across the distinct models of the history (at least 0.1)."""
    by_model = {r.model_key: r.features for r in history if r.features}
    scales = {}
    for name in FEATURES:
        values = [f.get(name, 0.0) for f in by_model.values()]
        mean = sum(values) / len(values) if values else 0.0
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else 0.0
        scales[name] = max(sd, 0.1)
    return scales


def distance(a: dict[str, float], b: dict[str, float], scales: dict[str, float]) -> float:
    return math.sqrt(sum(((a.get(k, 0.0) - b.get(k, 0.0)) / scales[k]) ** 2 for k in FEATURES))


def _blend(values: list[tuple[float, float]], prior: float, prior_sd: float) -> Estimate:
    """``values``: (measured value, weight). Weighted mean and spread of the neighbours,
    pulled towards the prior by one pseudo-observation."""
    total = sum(w for _, w in values)
    if total <= 0:
        return Estimate(prior, prior_sd)
    mean = sum(v * w for v, w in values) / total
    var = sum(w * (v - mean) ** 2 for v, w in values) / total
    n_eff = total ** 2 / sum(w * w for _, w in values)
    share = n_eff / (n_eff + 1.0)
    value = share * mean + (1 - share) * prior
    sd = math.sqrt(share * var + (1 - share) * prior_sd ** 2 + share * (prior_sd / (n_eff + 1.0)) ** 2)
    return Estimate(value, sd)


def size_by_family_fit(same: Sequence[Record], family: str, fp32_size_mb: float | None) -> float | None:
    """The size ratio of a model of ``fp32_size_mb`` from a straight line through the
    quantized sizes (MB) of the same recipe on models of the same family: size =
    fixed part + share x fp32 size. The fixed part (a format's own records, e.g.
    bitsandbytes' quantization state) dominates a small model; a ratio taken from a
    larger neighbour would then promise a file several times too small. None when the
    family has fewer than two models of different sizes measured with the recipe."""
    if not fp32_size_mb or fp32_size_mb <= 0:
        return None
    points = {r.model_key: (r.fp32_size_mb, r.size_ratio * r.fp32_size_mb) for r in same
              if r.family == family and r.fp32_size_mb and r.size_ratio is not None}
    xs, ys = [x for x, _ in points.values()], [y for _, y in points.values()]
    if len(set(xs)) < 2:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    size = mean_y + slope * (fp32_size_mb - mean_x)
    return size / fp32_size_mb if size > 0 else None


def predict(features: dict[str, float], family: str, recipe: tuple[str, str, str, str], history: Sequence[Record],
            model_key: str | None = None, scales: dict[str, float] | None = None,
            fp32_size_mb: float | None = None) -> Prediction:
    """``fp32_size_mb``: the model's fp32 size, for the size fit within its family."""
    method, precision, exporter, hardware = recipe
    prior = prior_for(method, precision, family, hardware)
    same = [r for r in history if r.recipe == recipe and r.drop is not None]
    own = [r for r in same if model_key is not None and r.model_key == model_key]
    quantize_times = [r.quantize_s for r in same if r.quantize_s is not None]
    quantize_s = sum(quantize_times) / len(quantize_times) if quantize_times else None
    if own:  # measured: the measurement, with its own CI as the spread
        r = own[-1]
        drop_sd = (r.drop_ci[1] - r.drop_ci[0]) / 3.92 if r.drop_ci else 0.0
        speed_sd = (r.speedup_ci[1] - r.speedup_ci[0]) / 3.92 if r.speedup_ci else prior.speedup_sd
        return Prediction(method, precision, exporter, hardware, Estimate(r.drop, drop_sd),
                          Estimate(r.speedup if r.speedup is not None else prior.speedup, speed_sd),
                          Estimate(r.size_ratio if r.size_ratio is not None else prior.size_ratio, 0.0),
                          r.quantize_s, support=len(own), measured=True, neighbours=[f"{r.model} (itself)"])
    scales = scales or feature_scales(history)
    ranked = sorted(((distance(features, r.features, scales), r) for r in same if r.features), key=lambda x: x[0])
    near = ranked[:NEIGHBOURS]
    weights = [(r, math.exp(-d * d / 2.0)) for d, r in near]  # a Gaussian kernel on the scaled distance
    drop = _blend([(r.drop, w) for r, w in weights], prior.drop, prior.drop_sd)
    speed = _blend([(r.speedup, w) for r, w in weights if r.speedup is not None], prior.speedup, prior.speedup_sd)
    size = _blend([(r.size_ratio, w) for r, w in weights if r.size_ratio is not None], prior.size_ratio, prior.size_sd)
    fitted = size_by_family_fit(same, family, fp32_size_mb)
    if fitted is not None:  # the neighbours' ratios still give the spread
        size = Estimate(fitted, size.sd)
    drivers = []
    if near:
        nearest = near[0][1].features
        gaps = sorted(FEATURES, key=lambda k: abs(features.get(k, 0.0) - nearest.get(k, 0.0)) / scales[k])
        drivers = [f"{k} {features.get(k, 0.0):.2f} (nearest {nearest.get(k, 0.0):.2f})" for k in gaps[:3]]
    return Prediction(method, precision, exporter, hardware, drop, speed, size, quantize_s, support=len(near),
                      neighbours=[f"{r.model} ({d:.1f})" for d, r in near], drivers=drivers)


__all__ = ["Estimate", "Prediction", "distance", "feature_scales", "predict", "size_by_family_fit"]
