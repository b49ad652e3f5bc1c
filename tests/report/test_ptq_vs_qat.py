"""The PTQ-vs-QAT comparison table, from results.json (and predictions.npz) files written by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from quantexp.models.base import Split
from quantexp.pipeline import save_predictions
from quantexp.report.ptq_vs_qat import (
    PAIRED_KEYS,
    comparison_rows,
    load_results,
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


# ---------------------------------------------------------------- paired vs PTQ
# 100 test items, all of class 0. PTQ is right on items 0-79 (80%), fp32 on 0-94 (95%).
N = 100


def correct_on(items) -> np.ndarray:
    """Predictions that are right (class 0) exactly on ``items``, wrong (class 1) elsewhere."""
    preds = np.ones(N, dtype=np.int64)
    preds[list(items)] = 0
    return preds


def write_run(root, name, method, preds, ids=None):
    """A run directory as the pipeline leaves it: results.json + predictions.npz."""
    run_dir = root / name
    run_dir.mkdir()
    test = Split((torch.zeros(N, 1),), torch.zeros(N, dtype=torch.long),
                 torch.arange(N) if ids is None else torch.as_tensor(ids))
    r = result(method, "w4a8_tensor", float((preds == 0).mean()))
    r["comparison"]["n_items"] = N
    r["predictions_path"] = str(save_predictions(run_dir / "predictions.npz", test,
                                                 {"fp32": correct_on(range(95)), method: preds}))
    (run_dir / "results.json").write_text(json.dumps(r))


def test_paired_delta_vs_ptq_is_significant_where_the_per_run_intervals_overlap(tmp_path):
    # QAT is right on every item PTQ gets right plus items 80-89: per-item difference is
    # +1 on 10 items and 0 on 90, so every bootstrap resample has delta >= 0 and the
    # paired 95% CI is about Binomial(100, 0.1)/100, i.e. ~[0.04, 0.16]; the Wilson
    # intervals of 80/100 and 90/100 ([0.711, 0.867] and [0.826, 0.945]) overlap.
    write_run(tmp_path, "0_ptq", "ptq_static", correct_on(range(80)))
    write_run(tmp_path, "1_qat", "qat", correct_on(range(90)))
    # Same accuracy as PTQ but right on different items: 10 items -1, 10 items +1.
    write_run(tmp_path, "2_ft", "qat_finetune", correct_on(range(10, 90)))
    rows = {r["method"]: r for r in comparison_rows(load_results(tmp_path))}

    qat = rows["qat"]
    assert qat["accuracy_ci_low"] < rows["ptq_static"]["accuracy_ci_high"]  # per-run: overlap
    assert qat["delta_vs_ptq"] == pytest.approx(0.10)
    assert 0.0 < qat["delta_vs_ptq_ci_low"] <= 0.06 and 0.14 <= qat["delta_vs_ptq_ci_high"] <= 0.17
    assert qat["mcnemar_vs_ptq_p"] == pytest.approx(2 * 0.5 ** 10)  # b=10, c=0
    assert qat["gap_recovered"] == pytest.approx(0.10 / 0.15)  # of fp32 95% - PTQ 80%

    ft = rows["qat_finetune"]
    # mean of 100 items in {-1: 10, 0: 80, +1: 10}: sd sqrt(0.2 / 100) ~ 0.045, CI ~ +-0.09
    assert ft["delta_vs_ptq"] == pytest.approx(0.0)
    assert -0.12 < ft["delta_vs_ptq_ci_low"] < -0.06 and 0.06 < ft["delta_vs_ptq_ci_high"] < 0.12
    assert ft["mcnemar_vs_ptq_p"] == pytest.approx(1.0)
    assert all(rows["ptq_static"][k] is None for k in PAIRED_KEYS)

    path = write_comparison(tmp_path)
    with path.open() as fh:
        written = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(written["qat"]["delta_vs_ptq"]) == pytest.approx(0.10)


def test_paired_columns_are_empty_without_predictions_and_refused_on_other_items(tmp_path):
    # results.json written by hand, no predictions.npz: the Wilson table still works
    rows = comparison_rows([result("ptq_static", "w4a8", 0.80), result("qat", "w4a8", 0.9)])
    assert all(r[k] is None for r in rows for k in PAIRED_KEYS)

    write_run(tmp_path, "0_ptq", "ptq_static", correct_on(range(80)))
    write_run(tmp_path, "1_qat", "qat", correct_on(range(90)), ids=np.arange(N)[::-1].copy())
    with pytest.raises(ValueError, match="different test items"):
        comparison_rows(load_results(tmp_path))
