"""run.py as a user runs it with exporter=onnx: fp32, ort_dynamic and ort_static on the
CNN in one multirun; every row is evaluated and timed in an ONNX Runtime session, the
int8 rows are smaller and as accurate (within tolerance), the per-node error table
reaches MLflow. PyTorch's static int8 model exports as a real QDQ graph; PyTorch's
dynamic int8 model is refused before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.run_api import run_api
from tests.run_py import run_py

TINY = ["model=cnn", "model.n_train=500", "model.epochs=2", "model.lr=0.003", "+debug=tiny",
        "method.calibration.size=64"]
# int8 ONNX vs fp32 ONNX accuracy on the 1,000 test items: at most 1.5 points apart
# (measured: 0.1-0.3 points).
ACCURACY_TOLERANCE = 0.015


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One directory for the module so the CNN is trained once (the model cache)."""
    return tmp_path_factory.mktemp("ort_e2e")


def test_cnn_fp32_ort_dynamic_ort_static_in_onnxruntime(shared):
    tmp = shared / "sweep"
    proc = run_py(["-m", "method=fp32,ort_dynamic,ort_static", "exporter=onnx", *TINY], tmp,
                  cache=shared / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for path in (tmp / "multirun").glob("*/results.json"):
        data = json.loads(path.read_text())
        results[data["method"]["name"]] = data
    assert set(results) == {"fp32", "ort_dynamic", "ort_static"}

    for data in results.values():
        for cand in data["candidates"].values():
            assert cand["runtime"] == "onnxruntime" and cand["artifact"].endswith(".onnx")
            assert Path(cand["artifact"]).exists() and cand["latency"]["p50_ms"] > 0
            assert cand["export.providers"] == "CPUExecutionProvider"
            assert cand["export.graph_optimization"] == "all"
    base = results["fp32"]["candidates"]["fp32"]
    assert base["export.parity.max_abs_err"] < 1e-4 and base["export.parity.top1_agreement"] == 1.0
    assert base["bits_per_param"] == pytest.approx(32.0) and base["export.quantized_nodes"] == 0
    assert base["accuracy"] > 0.6  # a model that learned something

    for name in ("ort_dynamic", "ort_static"):
        data = results[name]
        fp32, int8 = data["candidates"]["fp32"], data["candidates"][name]
        assert fp32["accuracy"] == base["accuracy"]  # the same fp32 ONNX model, the same session
        assert int8["export.quantized_nodes"] > 0
        assert abs(int8["accuracy"] - fp32["accuracy"]) <= ACCURACY_TOLERANCE
        comp = data["comparison"]
        assert comp["accuracy_delta_ci_low"] <= comp["accuracy_delta"] <= comp["accuracy_delta_ci_high"]
        assert comp["agreement_fp32"] >= 0.97 and "speedup_p50" in comp
        assert data["method"]["layer_error_layers"] >= 2 and data["method"]["layer_error_min_sqnr_db"] > 20
        assert len(list((tmp / "multirun").glob(f"*_{name}/tables/layer_error.csv"))) == 1
    assert results["ort_static"]["candidates"]["ort_static"]["bits_per_param"] < 8.2
    assert results["ort_static"]["comparison"]["size_ratio"] < 0.3
    assert results["ort_static"]["method"]["calibration_items"] == 64
    assert results["ort_dynamic"]["method"]["quantized_op_types"].count("MatMulInteger") == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("quantexp")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        name = run.data.params["method.name"]
        if name == "fp32":
            assert run.data.metrics["candidate.parity.top1_agreement"] == 1.0
        else:
            assert run.data.metrics["fp32.parity.top1_agreement"] == 1.0
            tables = [a.path for a in client.list_artifacts(run.info.run_id, "tables")]
            assert tables == ["tables/layer_error.csv"]
            models = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
            assert models == {"fp32.onnx"}  # the reference as a file; the deployed model as an MLflow model:
            (logged,) = [m for m in client.search_logged_models([experiment.experiment_id])
                         if m.source_run_id == run.info.run_id]
            assert str(logged.status).endswith("READY") and logged.tags["quantexp.flavour"] == "onnx"
            files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
            assert {"MLmodel", "model.onnx"} <= files


def test_ptq_static_exports_real_qdq_int8(shared):
    tmp = shared / "ptq_static"
    data = run_api(["method=ptq_static", "exporter=onnx", *TINY], tmp, cache=shared / "cache")
    int8, fp32 = data["candidates"]["ptq_static"], data["candidates"]["fp32"]
    assert int8["runtime"] == fp32["runtime"] == "onnxruntime"
    assert int8["export.quantized_nodes"] > 0 and fp32["export.quantized_nodes"] == 0
    assert 8.0 < int8["bits_per_param"] < 9.0
    # ORT runs the QDQ graph; it reproduces the in-memory torch.ao int8 model closely.
    assert int8["export.parity.top1_agreement"] >= 0.95
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= ACCURACY_TOLERANCE


def test_ptq_dynamic_with_onnx_is_refused_before_any_model_loads(tmp_path):
    proc = run_py(["method=ptq_dynamic", "exporter=onnx"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: method=ptq_dynamic cannot run with exporter=onnx; valid exporter values for "
        "ptq_dynamic: coreml, none, tflite")
    assert not (tmp_path / "cache").exists()
