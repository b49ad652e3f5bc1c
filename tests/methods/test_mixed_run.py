"""method=mixed strategy=auto end to end on a tiny CNN (in the default suite): the
kernel table decides what the solver may choose, the sensitivity analysis runs its
fast path with both methods, the built model keeps consecutive int8 layers in one
region, and the latency cap against the uniform int8 model is applied."""

from __future__ import annotations

import math

from tests.run_api import run_api

TINY = ["model=cnn", "model.n_train=600", "model.epochs=1", "+debug=tiny", "method=mixed",
        "method.strategy=auto", "method.budget.max_accuracy_drop=2.0", "method.calibration.size=64",
        "method.hessian_samples=4", "eval.bootstrap=100", "tracking.log_model=false"]


def test_auto_mixed_run_chooses_only_kernels_measured_fast_here(tmp_path):
    results = run_api(TINY, tmp_path)
    info, tables = results["method"], results["tables"]
    kernels = tables["kernels"]
    isa = set(info["kernels.isa"].split(","))
    offered = {(r["layer"], r["dtype"]) for r in kernels if r["offered"]}
    for row in kernels:
        if row["dtype"] in ("fp16", "bf16") and not isa & {"avx512_fp16", "avx512_bf16", "amx_fp16", "amx_bf16"}:
            assert not row["offered"] and "ISA" in row["reason"] and math.isnan(row["speedup"])
        if row["offered"] and not row["cached"]:  # timed here: not significantly (or materially) slower
            high = row["core_ci_high"] if not math.isnan(row["core_ci_high"]) else row["ci_high"]
            assert high >= 1.0 or "immaterial" in row["reason"], row
    # the solver only chose kernels offered on this host (or the measured check against
    # uniform int8 moved the layer to int8), and the model runs them
    moved = set(filter(None, info["int8_check.moved_to_int8"].split(",")))
    for row in tables["precision_assignment"]:
        assert row["assigned"] == "fp32" or (row["layer"], row["assigned"]) in offered or \
            (row["layer"] in moved and row["assigned"] == "int8"), row
        assert row["runs_in"] == row["assigned"]
    # no slower than the uniform int8 model: predicted from the measured kernel times,
    # then measured against it (interleaved) and, where slower, layers moved to int8
    assert info["latency_cap"] == "met"
    assert info["predicted.latency_ms"] <= info["latency_cap_ms"] + 1e-9
    assert info["int8_check.speedup_vs_uniform_int8"]
    assert "int8_check.status" not in info or info["int8_check.status"].startswith("not shown as fast")
    # consecutive int8 layers: one FX graph, a quantize/dequantize pair per region only
    if info["layers_int8"] >= 2:
        assert info["build_path"] == "fx_graph"
        assert info["int8_boundaries"] <= 2 * info["layers_int8"]
    # sensitivity: the fast path (replayed fp32 activations), both methods and their agreement
    assert info["sensitivity.replay"] == 1.0 and info["sensitivity.wall_s"] > 0
    assert {r["layer"] for r in tables["hessian_sensitivity"]} == {"conv1", "conv2", "fc1", "fc2"}
    assert -1.0 <= info["sensitivity.spearman_rho"] <= 1.0
    # the budget is re-checked on the measured numbers
    assert {"measured.accuracy_drop", "measured.size_mb", "met"} <= set(results["budget"])
