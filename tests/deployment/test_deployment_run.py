"""End to end: a run with a deployment profile whose memory cap the candidate exceeds
finishes, and results.json, the summary and MLflow say why it does not fit."""

from __future__ import annotations

import mlflow

from tests.run_api import run_api


def test_a_small_cap_makes_the_candidate_not_fit_and_the_run_finishes(tmp_path, capsys):
    r = run_api(["model=cnn", "method=fp32", "exporter=onnx", "+debug=tiny", "model.epochs=1", "model.n_train=300",
                 "deployment=edge_1core", "deployment.memory_mb=40", "deployment.requests=10"], tmp_path)
    d = r["deployment"]
    assert d["profile"]["name"] == "edge_1core" and d["profile"]["memory_mb"] == 40
    cand = d["candidates"]["fp32"]
    assert cand["format"] == "onnx"
    assert cand["verdict"]["fits"] is False
    assert "> 40 MB cap" in cand["verdict"]["summary"] or "allocation refused" in cand["verdict"]["summary"]
    assert cand["limits"]["cpus"] and len(cand["limits"]["cpus"]) == 1
    out = capsys.readouterr().out
    assert "deployment edge_1core" in out and "does not fit" in out
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(r["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["deployment.edge_1core.fp32"].startswith("does not fit: ")
    assert run.data.metrics["deployment.edge_1core.fp32.fits"] == 0.0
    assert run.data.metrics["deployment.edge_1core.fp32.peak_rss_mb"] > 40
