"""Baseline vs candidate: one ``Verdict`` per metric (``analysis.regression``), the
verdict JSON, and the MLflow tags on the candidate run.

Refused (``CompareError``, one line, exit 2): runs evaluated on different test items -
the paired accuracy test needs the same items in the same order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from quantexp.analysis.regression import (
    IMPROVED,
    NOT_MEASURED,
    REGRESSED,
    UNCHANGED,
    Verdict,
    accuracy_verdict,
    latency_verdict,
    speedup_verdict,
)
from quantexp.config.regression import RegressionConfig
from quantexp.files import atomic_write_json
from quantexp.regression.sources import RunRecord

REGRESSION_TAG = "quantexp.regression"


class CompareError(ValueError):
    """Two runs that cannot be compared; one line."""


@dataclass
class Comparison:
    baseline: RunRecord
    candidate: RunRecord
    verdicts: list[Verdict]
    config: RegressionConfig
    more_baselines: list[RunRecord] = field(default_factory=list)  # reruns of the baseline beyond the first

    @property
    def regressed(self) -> list[str]:
        """Metrics that regressed and count (``fail_on``)."""
        return [v.metric for v in self.verdicts if v.regressed and v.metric in self.config.fail_on]

    def to_dict(self) -> dict[str, Any]:
        def describe(r: RunRecord) -> dict[str, Any]:
            res = r.results
            return {"where": r.where, "mlflow_run_id": r.run_id, "results_path": res.results_path,
                    "label": res.label, "model": res.model.get("name"),
                    "git_commit": (res.provenance or {}).get("quantexp.git_commit")}

        return {"baseline": describe(self.baseline),
                "more_baselines": [describe(r) for r in self.more_baselines], "candidate": describe(self.candidate),
                "thresholds": asdict(self.config), "verdicts": [v.to_dict() for v in self.verdicts],
                "regressed": self.regressed}

    def write(self, path: Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def _same_items(base: RunRecord, cand: RunRecord) -> None:
    if base.predictions is None or cand.predictions is None:
        return
    a, b = base.predictions["ids"], cand.predictions["ids"]
    if a.shape != b.shape or not np.array_equal(a, b):
        raise CompareError(f"{base.where} and {cand.where} were evaluated on different test sets "
                           f"({a.size} vs {b.size} items, or other items): the paired accuracy test needs the "
                           "same items; compare runs of the same model and data split")


def _rounds(record: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    timed = record.results.interleaved or {}
    return (np.asarray(timed.get("reference_round_ms", []), float),
            np.asarray(timed.get("candidate_round_ms", []), float))


def compare(base: RunRecord | list[RunRecord], cand: RunRecord, config: RegressionConfig) -> Comparison:
    """``base``: one baseline run, or several reruns of it. Accuracy is paired against the
    first; latency and speed-up are judged against each baseline run, and regressed (or
    improved) only when they are against every one: between processes this VM drifts by
    more than one run's CI shows, and several reruns put that drift into the baseline."""
    bases = list(base) if isinstance(base, (list, tuple)) else [base]
    if not bases:
        raise CompareError("no baseline run given")
    for b in bases:
        _same_items(b, cand)
    first = bases[0]
    stats = dict(n_boot=config.bootstrap, confidence=config.confidence, seed=config.seed)
    correct_base, correct_cand = first.correct, cand.correct
    if correct_base is None or correct_cand is None:
        missing = first.where if correct_base is None else cand.where
        accuracy = Verdict("accuracy", NOT_MEASURED, None, None, None, config.accuracy_tolerance_pts, "-",
                           f"accuracy: no per-item predictions for {missing} (predictions.npz), so no paired test")
    else:
        accuracy = accuracy_verdict(correct_base, correct_cand, tolerance_pts=config.accuracy_tolerance_pts,
                                    **stats)
    cand_ms = np.asarray(cand.results.candidate.latency_raw_ms, float)
    latency = against_all([latency_verdict(np.asarray(b.results.candidate.latency_raw_ms, float), cand_ms,
                                           min_effect=config.latency_min_effect, **stats) for b in bases],
                          higher_is_worse=True)
    speedup = against_all([speedup_verdict(_rounds(b), _rounds(cand), min_effect=config.speedup_min_effect,
                                           **stats) for b in bases], higher_is_worse=False)
    return Comparison(first, cand, [accuracy, latency, speedup], config, bases[1:])


def against_all(verdicts: list[Verdict], *, higher_is_worse: bool) -> Verdict:
    """One verdict from one per baseline run: regressed (improved) only when regressed
    (improved) against every run, shown against the run that decides - the one the
    candidate differs from least in that direction."""
    measured = [v for v in verdicts if v.estimate is not None]
    if len(verdicts) == 1 or not measured:
        return verdicts[0]

    def worse(v: Verdict) -> float:
        return v.estimate if higher_is_worse else -v.estimate

    if all(v.status == REGRESSED for v in measured):
        chosen, status = min(measured, key=worse), REGRESSED
    elif all(v.status == IMPROVED for v in measured):
        chosen, status = max(measured, key=worse), IMPROVED
    else:
        # the middle run's figures, and "unchanged": not beyond the drift of the reruns
        chosen, status = sorted(measured, key=worse)[len(measured) // 2], UNCHANGED
    return replace(chosen, status=status, detail=f"{chosen.detail}; judged against each of "
                   f"{len(verdicts)} baseline runs, this one shown")


def tag_candidate(client, comparison: Comparison) -> None:
    """``quantexp.regression`` = the regressed metrics (or "none"), and one tag per metric."""
    run_id = comparison.candidate.run_id
    if run_id is None:
        return
    client.set_tag(run_id, REGRESSION_TAG, ",".join(comparison.regressed) or "none")
    for v in comparison.verdicts:
        client.set_tag(run_id, f"{REGRESSION_TAG}.{v.metric}", v.status)
    if comparison.baseline.run_id:
        client.set_tag(run_id, f"{REGRESSION_TAG}.baseline", comparison.baseline.run_id)


__all__ = ["CompareError", "Comparison", "REGRESSION_TAG", "against_all", "compare", "tag_candidate"]
