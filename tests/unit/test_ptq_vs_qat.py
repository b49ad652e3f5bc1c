"""The PTQ-vs-QAT comparison table, from results.json files written by hand."""

from __future__ import annotations

import csv
import json

import pytest

from quantexp.analysis.ptq_vs_qat import (
    comparison_rows,
    main,
    wilson_interval,
    write_comparison,
)


def result(method, precision, acc, model="cnn", p50=1.0, size=1000):
    return {"model": {"name": model}, "method": {"name": method, "precision": precision, "quantize_time_s": 1.0},
            "comparison": {"accuracy": acc, "accuracy_fp32": 0.9, "accuracy_delta": acc - 0.9,
                           "accuracy_delta_ci_low": acc - 0.92, "accuracy_delta_ci_high": acc - 0.88,
                           "n_items": 1000},
            "candidates": {method: {"latency": {"p50_ms": p50}, "size_bytes": size, "bits_per_param": 8.0}}}


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-4) and high == pytest.approx(0.8666, abs=1e-4)


def test_rows_pair_each_qat_method_with_ptq_at_the_same_precision(tmp_path):
    results = [result("ptq_static", "w4a8", 0.80), result("qat", "w4a8", 0.86),
               result("qat_finetune", "w4a8", 0.88), result("ptq_static", "int8", 0.89),
               result("qat", "int8", 0.90), result("qat", "w4a8", 0.5, model="lstm"),  # no PTQ: skipped
               result("fp32", "fp32", 0.9)]
    rows = comparison_rows(results)
    assert [(r["precision"], r["method"]) for r in rows] == [
        ("int8", "ptq_static"), ("int8", "qat"),
        ("w4a8", "ptq_static"), ("w4a8", "qat"), ("w4a8", "qat_finetune")]
    recovered = {(r["precision"], r["method"]): r["recovered_vs_ptq_points"] for r in rows}
    assert recovered[("w4a8", "qat_finetune")] == pytest.approx(8.0)
    assert recovered[("int8", "ptq_static")] == 0.0
    assert all(r["accuracy_ci_low"] < r["accuracy"] < r["accuracy_ci_high"] for r in rows)

    for i, r in enumerate(results):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    path = write_comparison(tmp_path)
    with path.open() as fh:
        assert len(list(csv.DictReader(fh))) == 5
    assert main([str(tmp_path)]) == 0
