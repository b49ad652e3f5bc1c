"""run.py as a user runs it with exporter=tflite: fp32 and ptq_static on the CNN in one
multirun; every row comes from the LiteRT interpreter, the int8 artifact is smaller and
as accurate (within tolerance), parity facts reach results.json and MLflow. Plus an
incompatible combination refused before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.run_py import run_py

pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (uv sync --extra tflite)")
pytest.importorskip("litert_torch", reason="needs the tflite extra (uv sync --extra tflite)")

TINY = ["+debug=tiny", "method.calibration.size=128"]
# Full-integer int8 vs fp32 TFLite accuracy on the 1,000 test items (measured: <= 0.3 points).
ACCURACY_TOLERANCE = 0.015


def test_cnn_fp32_and_ptq_static_through_litert(tmp_path):
    proc = run_py(["-m", "method=fp32,ptq_static", "exporter=tflite", "model=cnn",
                   "model.n_train=500", "model.epochs=2", "model.lr=0.003", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for path in (tmp_path / "multirun").glob("*/results.json"):
        data = json.loads(path.read_text())
        results[data["method"]["name"]] = data
    assert set(results) == {"fp32", "ptq_static"}

    for data in results.values():
        for cand in data["candidates"].values():
            assert cand["runtime"] == "litert"
            assert cand["artifact"].endswith(".tflite") and Path(cand["artifact"]).exists()
            assert cand["export.tflite.static_batch"] == 4  # = bench.batch_size
            assert cand["latency"]["batch_size"] == 4 and cand["latency"]["p50_ms"] > 0
            assert 0.0 <= cand["export.parity.max_abs_err"] and cand["export.parity.items"] == 64

    base = results["fp32"]["candidates"]["fp32"]
    assert base["export.tflite.quantization"] == "none"
    assert base["export.parity.max_abs_err"] < 1e-4 and base["export.parity.top1_agreement"] == 1.0
    assert base["bits_per_param"] == pytest.approx(32.0)
    assert results["fp32"]["comparison"]["agreement_fp32"] == 1.0

    static = results["ptq_static"]
    fp32, int8 = static["candidates"]["fp32"], static["candidates"]["ptq_static"]
    assert int8["export.tflite.quantization"] == "full_int8"
    assert int8["export.tflite.io"] == "int8 -> int8"
    assert int8["export.tflite.calibration_items"] == 128
    assert int8["export.tflite.convert_reused"] is True
    assert int8["bits_per_param"] < 9.0 and static["comparison"]["size_ratio"] < 0.35
    assert fp32["accuracy"] > 0.7
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= ACCURACY_TOLERANCE
    assert int8["export.parity.top1_agreement"] >= 0.95
    # The fp32 rows of both jobs are the same conversion of the same cached model.
    assert fp32["accuracy"] == base["accuracy"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("quantexp")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    metrics = {r.data.params["method.name"]: r.data.metrics for r in runs}
    assert metrics["ptq_static"]["candidate.parity.top1_agreement"] == int8["export.parity.top1_agreement"]
    assert metrics["ptq_static"]["fp32.parity.max_abs_err"] == fp32["export.parity.max_abs_err"]
    assert metrics["fp32"]["candidate.parity.max_abs_err"] < 1e-4


def test_tflite_with_fp16_dynamic_is_refused_before_any_model_loads(tmp_path):
    proc = run_py(["exporter=tflite", "method=ptq_dynamic", "precision=fp16"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: exporter=tflite deploys method=ptq_dynamic as dynamic_int8; precision=fp16 "
        "is not supported; valid precision: int8")
    assert not (tmp_path / "cache").exists()
