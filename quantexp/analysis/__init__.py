"""Analysis of run results: statistical accuracy comparison against a reference (accuracy.py)."""

from quantexp.analysis.accuracy import (
    DeltaCI,
    McNemarResult,
    accuracy,
    agreement,
    compare_predictions,
    mcnemar_exact,
    paired_bootstrap_delta,
)

__all__ = [
    "DeltaCI",
    "McNemarResult",
    "accuracy",
    "agreement",
    "compare_predictions",
    "mcnemar_exact",
    "paired_bootstrap_delta",
]
