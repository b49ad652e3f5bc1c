"""``python run.py method=ptq_static hardware=ane`` (through the Python API, in-process),
on tiny CNN settings: the validated .mlpackage, the ANE report (file and MLflow
artifact), and accuracy/latency marked not measured on a non-macOS host; plus the
up-front refusal of an exporter the ANE cannot use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.run_api import run_api
from tests.run_py import run_py

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=200", "model.epochs=1", "+debug=tiny", "method.calibration.size=32"]
NOT_MEASURED = "not measured on this host: Core ML prediction needs macOS"


@pytest.mark.skipif(sys.platform == "darwin", reason="checks what a non-macOS host records")
def test_ptq_static_on_ane_end_to_end(tmp_path, capsys):
    data = run_api(["method=ptq_static", "hardware=ane", *TINY], tmp_path)
    assert NOT_MEASURED in capsys.readouterr().out  # the summary says so
    assert data["config"]["exporter"]["name"] == "coreml"
    for metric in ("ptq_static.accuracy", "ptq_static.latency", "fp32.accuracy", "fp32.latency"):
        assert data["not_measured"][metric] == NOT_MEASURED
    cand = data["candidates"]["ptq_static"]
    package = Path(cand["artifact"])
    assert package.suffix == ".mlpackage" and (package / "Manifest.json").is_file()
    assert cand["accuracy"] is None and cand["latency"] == {}  # nothing made up
    assert cand["export.coreml.validated"] is True
    assert cand["export.coreml.compute_units"] == "cpu_and_ne"
    assert cand["export.coreml.op_counts"]["conv"] == 2
    assert cand["export.coreml.weight_op_counts"]["constexpr_affine_dequantize"] == 4
    assert 8.0 < cand["bits_per_param"] < 8.2 and data["candidates"]["fp32"]["bits_per_param"] == 16.0
    report = json.loads(Path(cand["reports"]["ptq_static.ane_report.json"]).read_text())
    assert report["compute_units"] == "cpu_and_ne" and report["compute_ops"] > 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["not_measured.candidate.latency"] == NOT_MEASURED
    assert run.data.tags["not_measured.fp32.accuracy_pct"] == NOT_MEASURED
    assert "candidate.latency.p50_ms" not in run.data.metrics and "candidate.accuracy_pct" not in run.data.metrics
    assert run.data.metrics["candidate.bits_per_param"] == pytest.approx(cand["bits_per_param"])
    reports = [a.path for a in client.list_artifacts(run.info.run_id, "reports/ptq_static")]
    assert "reports/ptq_static/ptq_static.ane_report.json" in reports


def test_ane_refuses_other_exporters_up_front(tmp_path):
    # exporter=onnx once its config exists (another exporter); exporter=none until then.
    exporter = "onnx" if (ROOT / "conf" / "exporter" / "onnx.yaml").exists() else "none"
    proc = run_py(["method=ptq_static", "hardware=ane", f"exporter={exporter}"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "coreml" in last
    assert f"exporter={exporter}" in last
    assert not (tmp_path / "cache").exists()  # refused before any model loads
