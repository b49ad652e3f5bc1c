"""The quality gate decides on the accuracy drop's confidence interval: passed, FAILED
or inconclusive; and eval.gate_fails_run turns a FAILED gate into exit code 4."""

from __future__ import annotations

import json

import pytest

from quantexp.cli import EXIT_GATE_FAILED
from quantexp.pipeline.record import quality_gate
from tests.run_py import run_py


def comparison(delta_pts: float, low_pts: float, high_pts: float) -> dict[str, float]:
    # accuracy deltas are fractions, candidate minus fp32 (a drop is a negative delta)
    return {"accuracy_delta": delta_pts / 100, "accuracy_delta_ci_low": low_pts / 100,
            "accuracy_delta_ci_high": high_pts / 100}


@pytest.mark.parametrize("delta, low, high, verdict, passed", [
    (-0.2, -0.6, 0.2, "passed", True),        # the whole drop interval [-0.2, 0.6] is <= 1
    (-3.0, -4.5, -1.5, "failed", False),      # the whole drop interval [1.5, 4.5] is > 1
    (-0.5, -1.5, 0.5, "inconclusive", None),  # [-0.5, 1.5] straddles 1: the point estimate alone would pass
    (-1.2, -2.0, -0.8, "inconclusive", None),  # [0.8, 2.0]: the point estimate alone would fail
])
def test_the_interval_decides(delta, low, high, verdict, passed):
    gate = quality_gate(comparison(delta, low, high), max_drop=1.0)
    assert gate["verdict"] == verdict and gate["passed"] is passed
    assert gate["accuracy_drop_points"] == pytest.approx(-delta)
    assert gate["accuracy_drop_ci_low"] == pytest.approx(-high) and gate["accuracy_drop_ci_high"] == pytest.approx(-low)


def test_no_gate_and_no_measurement_pass_nothing():
    assert quality_gate(comparison(-1, -2, 0), None) == {"max_accuracy_drop": None, "passed": None}
    assert quality_gate({}, 1.0) == {"max_accuracy_drop": None, "passed": None}


def test_a_failed_gate_fails_the_process_when_asked(tmp_path):
    # A real failure: QAT from scratch for one epoch at lr 1e-6 barely moves the random
    # initialisation, against an fp32 CNN trained for two epochs.
    args = ["model=cnn", "model.epochs=2", "model.n_train=500", "model.n_test=200", "+debug=tiny",
            "tracking.enabled=false", "method=qat", "method.epochs=1", "method.lr=1e-6",
            "eval.max_accuracy_drop=0"]
    proc = run_py([*args, "eval.gate_fails_run=true"], tmp_path)
    assert proc.returncode == EXIT_GATE_FAILED, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())  # the run is complete
    assert results["gate"]["verdict"] == "failed" and results["gate"]["accuracy_drop_ci_low"] > 0
    assert "quality gate (max drop 0.0 pts): FAILED" in proc.stdout
    # without gate_fails_run the same gate is reported, and the exit code stays 0
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
