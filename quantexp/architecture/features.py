"""A model as a short vector of numbers, for comparing models with each other (the
recommender's nearest neighbours): its size, where its compute goes, and how
quantization-unfriendly its weights and activations are. Each feature is scaled to be
roughly 0..1 (shares) or a log, so that no single one dominates a distance."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantexp.architecture.run import Analysis

FEATURES = ("log10_params", "log10_macs", "mac_share.conv", "mac_share.recurrent", "mac_share.linear",
            "mac_share.attention", "param_share.embedding", "outlier_layer_share", "log10_max_kurtosis",
            "log10_median_input_range", "small_layer_share")


def features_of(analysis: "Analysis") -> dict[str, float]:
    c, stats = analysis.census, analysis.stats
    n = max(len(stats), 1)
    ranges = [s.input_dynamic_range for s in stats if math.isfinite(s.input_dynamic_range)]
    return {
        "log10_params": math.log10(max(c.params_total, 1)),
        "log10_macs": math.log10(max(c.macs_total, 1.0)),
        **{f"mac_share.{k}": c.mac_share.get(k, 0.0) for k in ("conv", "recurrent", "linear", "attention")},
        "param_share.embedding": c.param_share.get("embedding", 0.0),
        "outlier_layer_share": sum(s.input_outlier_channels > 0 for s in stats) / n,
        "log10_max_kurtosis": math.log10(1.0 + max((max(s.weight_kurtosis, 0.0) for s in stats), default=0.0)),
        "log10_median_input_range": math.log10(statistics.median(ranges)) if ranges else 0.0,
        "small_layer_share": sum(r.small_channels or r.depthwise for r in c.layers) / max(len(c.layers), 1),
    }


__all__ = ["FEATURES", "features_of"]
