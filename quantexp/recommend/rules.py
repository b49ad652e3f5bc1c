"""The recommender's prior: what each method usually does, before any measurement of a
similar model - accuracy drop, speed-up vs the same runtime's fp32 and size ratio, each
with a wide spread - and what applying it costs (what data it needs).

The numbers are the ones this project measured on its zoo (README tables, 2-core AVX2
host), rounded and widened; the prior only matters where history is thin: with measured
neighbours the recommender leans on them (``predict.py``). Where a family changes the
picture (a CNN has no Linear-heavy compute for dynamic int8 to speed up; an LSTM stays
float under static int8), the family adjusts the prior.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# what applying the method needs, cheapest first
NEEDS = ("weights only", "calibration data", "training")


@dataclass(frozen=True)
class Prior:
    drop: float  # accuracy points lost vs fp32
    drop_sd: float
    speedup: float  # vs the same runtime's fp32, > 1 faster
    speedup_sd: float
    size_ratio: float  # artifact bytes / fp32 bytes
    size_sd: float
    needs: str  # one of NEEDS


PRIORS: dict[str, Prior] = {
    "fp32": Prior(0.0, 0.0, 1.0, 0.0, 1.0, 0.0, NEEDS[0]),
    "ptq_dynamic": Prior(0.5, 1.5, 1.2, 0.4, 0.35, 0.2, NEEDS[0]),
    "ptq_static": Prior(0.8, 2.0, 1.5, 0.5, 0.3, 0.15, NEEDS[1]),
    "ort_dynamic": Prior(0.5, 1.5, 1.3, 0.4, 0.3, 0.15, NEEDS[0]),
    "ort_static": Prior(1.0, 2.0, 1.3, 0.5, 0.3, 0.15, NEEDS[1]),
    "bnb_int8": Prior(0.3, 1.0, 0.4, 0.3, 0.4, 0.2, NEEDS[0]),
    "bnb_nf4": Prior(1.0, 2.0, 0.4, 0.3, 0.25, 0.15, NEEDS[0]),
    "qat": Prior(0.5, 1.5, 1.5, 0.5, 0.3, 0.15, NEEDS[2]),
    "qat_finetune": Prior(0.3, 1.0, 1.5, 0.5, 0.3, 0.15, NEEDS[2]),
    "mixed": Prior(0.5, 1.5, 1.1, 0.5, 0.4, 0.2, NEEDS[1]),
    "cascade": Prior(0.2, 0.5, 1.1, 0.4, 1.3, 0.2, NEEDS[1]),
}
UNKNOWN = Prior(1.0, 3.0, 1.0, 0.5, 0.5, 0.3, NEEDS[1])
# 4-bit precisions lose more than the method's int8 default
LOW_BITS = {"w4a8": 1.5, "w4a8_tensor": 2.5, "nf4": 1.0, "fp4": 2.0}


HALF = ("fp16", "bf16")


def prior_for(method: str, precision: str, family: str, hardware: str = "cpu") -> Prior:
    prior = PRIORS.get(method, UNKNOWN)
    if precision in HALF and hardware == "cpu":
        # half-precision weights without half-precision kernels (AVX2): converted back per call
        prior = replace(prior, speedup=0.5, speedup_sd=0.3, size_ratio=0.5)
    if precision in LOW_BITS and method != "bnb_nf4":
        prior = replace(prior, drop=prior.drop + LOW_BITS[precision], drop_sd=prior.drop_sd + 1.0)
    if family == "cnn" and method in ("ptq_dynamic", "ort_dynamic"):
        # dynamic int8 reaches Linear layers only; a CNN's compute is in its convolutions
        prior = replace(prior, speedup=1.0, speedup_sd=0.2, size_ratio=0.6)
    if family == "rnn" and method in ("ptq_static", "qat", "qat_finetune"):
        prior = replace(prior, speedup=1.0, speedup_sd=0.2, size_ratio=0.9)  # the LSTM stays float
    return prior


__all__ = ["LOW_BITS", "NEEDS", "PRIORS", "Prior", "prior_for"]
