"""run.py with method=qat / qat_finetune as a user runs it (a subprocess), on tiny
settings: a QAT run end to end with per-epoch metrics in MLflow and the
converted model evaluated; a diverging run that stops with a clear message and
a FAILED MLflow run that keeps the metrics logged so far; refusals up front;
``method=qat hardware=ane`` through the Core ML exporter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_run_py import ROOT, TINY, run_py, store
from tests.run_api import run_api

QAT_TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "method.epochs=1", "method.log_every=1",
            *TINY]


def test_qat_run_logs_epochs_and_deploys_the_converted_model(tmp_path):
    proc = run_py(["method=qat", "precision=w4a8", *QAT_TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    method = data["method"]
    assert method["path"] == "fx_qat" and method["weight_bits"] == 4 and method["weight_value_bits"] <= 4
    assert method["quantized_layers"] == 4 and method["float_layers_left"] == 0
    assert method["fake_vs_converted_top1_agreement"] >= 0.98
    assert data["candidates"]["qat"]["runtime"] == "torch"
    assert 0.0 <= data["comparison"]["accuracy"] <= 1.0
    # per-item predictions beside results.json, for paired comparisons across runs
    with np.load(data["predictions_path"]) as preds:
        assert sorted(preds.files) == ["fp32", "ids", "labels", "qat"]
        assert (preds["qat"] == preds["labels"]).mean() == pytest.approx(data["comparison"]["accuracy"])
    history = (tmp_path / "run" / "tables" / "qat_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 2
    client, runs = store(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
    run_id = runs[0].info.run_id
    steps = client.get_metric_history(run_id, "qat.step.loss")
    assert len(steps) >= 3 and [m.step for m in steps] == sorted(m.step for m in steps)
    assert [m.step for m in client.get_metric_history(run_id, "qat.epoch.val_accuracy")] == [1]
    artifacts = [a.path for a in client.list_artifacts(run_id, "tables")]
    assert "tables/qat_history.csv" in artifacts and "tables/qat_weight_ranges.csv" in artifacts


def test_diverging_training_fails_the_run_and_keeps_its_metrics(tmp_path):
    from quantexp.methods.qat.fake_quant import QATDiverged

    with pytest.raises(QATDiverged, match="QAT training diverged: loss is"):
        run_api(["method=qat", "precision=w4a8", *QAT_TINY, "method.lr=1e30", "method.lr_schedule=constant"],
                tmp_path)
    client, runs = store(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["error"].startswith("QATDiverged: QAT training diverged")
    # the steps before the divergence stay logged
    assert client.get_metric_history(runs[0].info.run_id, "qat.step.loss")
    assert "traceback.txt" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]


# The other refusals (impossible bit widths, bit schedules) are checked on composed
# configs in tests/integration/test_compose_qat.py, without a process each.
@pytest.mark.parametrize("args,message", [
    (["method=qat", "model=minilm"],
     "error: method=qat cannot run with model family=transformer; valid model family values for qat: cnn, rnn"),
])
def test_bad_qat_configs_refused_before_any_model_loads(tmp_path, args, message):
    proc = run_py(args, tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not (ROOT / "conf" / "exporter" / "coreml.yaml").exists(),
                    reason="the Core ML exporter (conf/exporter/coreml.yaml) has not landed in this tree")
def test_qat_on_ane_end_to_end(tmp_path):
    """The example users quote: `python run.py method=qat hardware=ane`, on Linux. The
    Core ML package is written; accuracy/latency are 'not measured on this host'."""
    data = run_api(["method=qat", "hardware=ane", *QAT_TINY], tmp_path)
    assert data["method"]["name"] == "qat" and data["method"]["path"] == "fx_qat"
    assert Path(data["candidates"]["qat"]["artifact"]).exists()
    if data["candidates"]["qat"]["accuracy"] is None:
        assert data["not_measured"]["qat.accuracy"].startswith("not measured on this host: ")
    _, runs = store(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
