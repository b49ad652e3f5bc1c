"""run.py as a user runs it (a subprocess), on tiny settings: every model family
through every method in one multirun each, then the MLflow store and results.json
are checked; plus the refusals and a FAILED run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantexp.report.sweeps import format_row, read_sweep, sweep_param
from tests.run_py import run_py

ROOT = Path(__file__).resolve().parents[2]
TINY = ["+debug=tiny", "method.calibration.size=32"]
METHODS = "method=fp32,ptq_static,ptq_dynamic"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def store(tmp: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("quantexp")
    return client, client.search_runs([experiment.experiment_id])


def check_sweep(tmp: Path, proc: subprocess.CompletedProcess, family: str) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp / "multirun").glob("*/results.json"))
    assert len(results) == 3, proc.stderr[-2000:]
    by_method = {}
    for path in results:
        data = json.loads(path.read_text())
        by_method[data["method"]["name"]] = data
        assert data["model"]["family"] == family
        comp = data["comparison"]
        assert 0.0 <= comp["accuracy"] <= 1.0 and comp["accuracy_delta_ci_low"] <= comp["accuracy_delta_ci_high"]
        for cand in data["candidates"].values():
            assert cand["latency"]["p50_ms"] > 0 and cand["size_bytes"] > 0
            assert Path(cand["artifact"]).exists()
    assert set(by_method) == {"fp32", "ptq_static", "ptq_dynamic"}
    # fp32 is its own reference: full agreement, zero delta.
    assert by_method["fp32"]["comparison"]["agreement_fp32"] == 1.0
    assert by_method["fp32"]["comparison"]["accuracy_delta"] == 0.0
    assert by_method["ptq_dynamic"]["candidates"]["ptq_dynamic"]["bits_per_param"] < 32.0
    assert by_method["ptq_static"]["candidates"]["fp32"]["bits_per_param"] == pytest.approx(32.0)
    # The sweep's fp32 reference was exported and evaluated by one job and loaded by the
    # other; each job timed it again, interleaved with its own candidate.
    quantized = [by_method[m] for m in ("ptq_static", "ptq_dynamic")]
    assert sorted(d["candidates"]["fp32"]["from_sweep_cache"] for d in quantized) == [False, True]
    assert len({d["candidates"]["fp32"]["artifact"] for d in quantized}) == 1
    assert len({d["candidates"]["fp32"]["accuracy"] for d in quantized}) == 1
    for d in quantized:
        cached = d["candidates"]["fp32"]["from_sweep_cache"]
        assert ("export_fp32" in d["stages_s"]) is not cached and "timing" in d["stages_s"]
        rounds = d["interleaved"]["rounds"]
        assert rounds >= 4 and len(d["interleaved"]["reference_round_ms"]) == rounds
        # +debug=tiny times in the job's process and one forked from it, which loaded both
        # artifacts again (the fp32 one from the sweep's cache for one of the two jobs)
        assert d["interleaved"]["processes"] == 2 and d["interleaved"]["processes_note"] is None
        assert len(d["interleaved"]["process_ratios"]) == 2 and rounds >= 8
        comp = d["comparison"]
        assert comp["speedup_ci_low"] <= comp["speedup_p50"] <= comp["speedup_ci_high"]
        assert comp["speedup_verdict"] in ("faster", "slower", "no significant difference")
        assert d["candidates"]["fp32"]["latency"]["n_iters"] == d["candidates"][d["method"]["name"]]["latency"]["n_iters"]
    assert "interleaved" not in by_method["fp32"]  # a baseline run has no partner to time with
    client, runs = store(tmp)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    for child in children:
        assert child.info.status == "FINISHED"
        assert "candidate.accuracy_pct" in child.data.metrics and "candidate.latency.p50_ms" in child.data.metrics
        assert child.data.params["model.name"]
        assert child.data.tags["host.threads"] and child.data.tags["version.torch"]


def test_cnn_all_methods_through_the_families_recipe(tmp_path):
    # the recipe's own sweep (conf/experiment/families.yaml), narrowed to the CNN
    proc = run_py(["-m", "+experiment=families", sweep_param("model", "cnn"), "model.n_train=300",
                   "model.epochs=1", *TINY], tmp_path)
    check_sweep(tmp_path, proc, "cnn")
    results = read_sweep(tmp_path / "multirun")
    assert [r.label for r in results] == ["fp32", "ptq_static", "ptq_dynamic"]
    rows = [format_row(r) for r in results]
    assert all(row.startswith("cnn") for row in rows) and "1.00x" in rows[0]
    static = json.loads(next((tmp_path / "multirun").glob("*ptq_static/results.json")).read_text())
    assert static["method"]["path"] == "fx_graph_mode"
    assert static["method"]["quantized_layers"] >= 3
    check_sweep_report(tmp_path, proc)


def check_sweep_report(tmp: Path, proc: subprocess.CompletedProcess) -> None:
    """The report the sweep callback writes at the end of every multirun."""
    import csv

    sweep = tmp / "multirun"
    assert "report: " in proc.stdout and "front (lat)" in proc.stdout
    for name in ("report.html", "comparison.csv", "comparison.md", "pareto_p50.png", "pareto_size.png"):
        assert (sweep / name).is_file() and (sweep / name).stat().st_size > 0, name
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert sorted(r["method"] for r in rows) == ["fp32", "ptq_dynamic", "ptq_static"]
    assert any(r["front_size"] == "True" for r in rows) and any(r["front_latency"] == "True" for r in rows)
    html = (sweep / "report.html").read_text()
    assert "<script" in html and "cdn.plot.ly" not in html.split("<body>")[0]  # offline: plotly inlined
    assert (sweep / "report.html").stat().st_size < 5_000_000
    client, runs = store(tmp)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/comparison.csv", "report/comparison.md"} <= logged
    # the parent: named by date and what was swept, the table as its description, the best candidate
    assert " sweep " in parent.info.run_name and "+experiment=families" in parent.info.run_name
    assert "| ptq_static |" in parent.data.tags["mlflow.note.content"]
    best = parent.data.tags["quantexp.best"]
    assert best.split()[1].split("@")[0] in ("ptq_static", "ptq_dynamic")
    assert {"best.accuracy_pct", "best.drop_pts", "best.size_mb"} <= set(parent.data.metrics)
    # the same report from the runs in MLflow, through the command
    out = tmp / "from_mlflow"
    again = subprocess.run([sys.executable, "-m", "quantexp", "report", "--experiment", "quantexp",
                            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    from_store = list(csv.DictReader((out / "comparison.csv").open()))
    assert sorted(map(str, from_store)) == sorted(map(str, rows))  # same runs, same figures


def test_lstm_all_methods(tmp_path):
    proc = run_py(["-m", METHODS, "model=lstm", "model.n_train=300", "model.epochs=1", *TINY], tmp_path)
    check_sweep(tmp_path, proc, "rnn")


# ~55 s: the real MiniLM through three methods. Slow: the transformer family's subprocess
# case in the default suite is test_hf_model_from_a_local_directory, and no line is reached
# only here (benchmarks/suite_coverage.py)
@pytest.mark.slow
def test_minilm_all_methods(tmp_path):
    proc = run_py(["-m", METHODS, "model=minilm", "model.n_train=64", "model.n_test=48",
                   "model.head_epochs=2", "model.max_length=32", *TINY], tmp_path)
    check_sweep(tmp_path, proc, "transformer")
    static = json.loads(next((tmp_path / "multirun").glob("*ptq_static/results.json")).read_text())
    assert static["method"]["path"] == "eager_per_layer"


def test_single_run_writes_results_and_summary(tmp_path):
    proc = run_py(["model=cnn", "model.n_train=300", "model.epochs=1", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ptq_static" in proc.stdout and "speed-up" in proc.stdout
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["candidates"]["fp32"]["runtime"] == "torch"
    assert data["mlflow_run_id"]
    _, runs = store(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_failed_run_is_marked_failed_with_traceback(tmp_path):
    # fp32 training that diverges fails after the MLflow run opened (a missing model.path,
    # this test's former trigger, is now refused by the pre-flight before any run opens)
    proc = run_py(["model=cnn", "model.n_train=300", "model.epochs=1", "model.lr=1e30", "method=fp32", *TINY],
                  tmp_path)
    assert proc.returncode == 2
    assert "training diverged" in proc.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "cache").rglob("model.pt"))  # a diverged model is never cached
    client, runs = store(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert "traceback.txt" in artifacts


@pytest.mark.parametrize("args,message", [
    (["precision=fp16"], "error: method=ptq_static cannot run with precision=fp16; valid precision values for ptq_static: int8, w4a8, w4a8_tensor"),
    pytest.param(["hardware=cuda", "method=fp32"], "error: hardware=cuda is not available on this host",
                 marks=pytest.mark.skipif(_has_cuda(), reason="this host has a GPU")),
])
def test_refused_before_any_model_loads(tmp_path, args, message):
    proc = run_py(args, tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "cache").exists()  # nothing was trained or loaded


def test_help_lists_groups_and_options(tmp_path):
    proc = run_py(["--help"], tmp_path, timeout=120)
    assert proc.returncode == 0
    for group in ("model", "method", "precision", "hardware", "exporter"):
        options = ", ".join(sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")))
        assert f"{group}: {options}" in proc.stdout


def test_hf_model_from_a_local_directory(tmp_path, tiny_bert):
    """`model=hf` on a tiny BERT the test wrote itself: loaded with local files only,
    head trained, quantized and measured like any other model."""
    proc = run_py(["-m", "method=fp32,ptq_dynamic", "model=hf", f"model.path={tiny_bert}",
                   "model.n_train=64", "model.n_test=40", "model.head_epochs=2", "model.max_length=16",
                   *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "multirun").glob("*/results.json"))]
    assert [r["method"]["name"] for r in results] == ["fp32", "ptq_dynamic"]
    assert all(r["model"]["name"] == "hf" and r["model"]["n_test"] == 40 for r in results)
    assert results[1]["method"]["quantized_layers"] > 0
