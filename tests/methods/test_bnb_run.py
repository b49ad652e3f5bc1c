"""bitsandbytes methods end to end through run.py (a subprocess, as a user runs it):
one multirun over bnb_int8 and bnb_nf4 on a small CNN trained to ~75% on MNIST, then
results.json, the saved artifacts (loaded back here and re-evaluated) and the MLflow
store are checked; plus the refusal of a model with no Linear layer left to quantize.

Tolerances (accuracy of the loaded quantized artifact vs the fp32 artifact, same
1,000 test digits): LLM.int8 within 1.5 points with >= 98% agreement; NF4 (4-bit
weights of both Linear layers, the 10-way classifier included) within 5 points with
>= 92% agreement. Measured here: int8 +0.0 points / 100% agreement; NF4 -2.6 points
/ 94.8% agreement (a one-epoch model has small margins; a broken quantization lands
near 10% accuracy).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.run_py import run_py
from tests.session import built_once

pytest.importorskip("bitsandbytes")

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["model=cnn", "model.n_train=1000", "model.epochs=1", "model.lr=0.003"]
TINY = ["+debug=tiny", "method.calibration.size=64"]
TOLERANCE = {"bnb_int8": (0.015, 0.98), "bnb_nf4": (0.05, 0.92)}  # (|delta acc|, min agreement)

# Hand-computed stored parameter bits of the default CNN (conv 1->16->32, fc 1568->64->10):
# convs stay fp32: (16*9+16 + 32*16*9+32) * 32 = 153,600
# int8:  fc1 100,352*8 + 64*32 (SCB) + 64*32 (bias) = 806,912; fc2 640*8 + 10*32 + 10*32 = 5,760
# NF4 + double quant, blocksize 64 (codes + uint8 absmax + fp32 nested absmax + code books
# 16+256 fp32 per layer): fc1 401,408 + 1,568*8 + 7*32 + 8,704 = 422,880 (+ bias 2,048);
# fc2 2,560 + 10*8 + 1*32 + 8,704 = 11,376 (+ bias 320)
N_PARAMS = 4_800 + 100_352 + 64 + 640 + 10
EXPECTED_BITS = {"bnb_int8": (153_600 + 806_912 + 5_760) / N_PARAMS,
                 "bnb_nf4": (153_600 + 422_880 + 2_048 + 11_376 + 320) / N_PARAMS}


def load_artifact(path: Path):
    import bitsandbytes  # noqa: F401  (registers the torch ops the artifacts call)
    import torch

    try:
        return torch.jit.load(str(path))
    except RuntimeError:  # not TorchScript: the exporter's torch.save fallback
        return torch.load(path, weights_only=False)


def _sweep(tmp: Path) -> None:
    proc = run_py(["-m", "method=bnb_int8,bnb_nf4", *MODEL, *TINY], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def sweep():
    tmp = built_once("bnb_run", _sweep)  # once per session, whichever worker comes first
    results = {}
    for path in sorted((tmp / "multirun").glob("*/results.json")):
        data = json.loads(path.read_text())
        results[data["method"]["name"]] = (data, path.parent)
    assert set(results) == {"bnb_int8", "bnb_nf4"}
    return tmp, results


@pytest.mark.parametrize("method", ["bnb_int8", "bnb_nf4"])
def test_results_accuracy_bits_and_layer_table(sweep, method):
    _, results = sweep
    data, run_dir = results[method]
    info, comp = data["method"], data["comparison"]
    max_delta, min_agree = TOLERANCE[method]
    assert data["candidates"]["fp32"]["accuracy"] > 0.6  # a model worth comparing against
    assert abs(comp["accuracy_delta"]) <= max_delta, comp
    assert comp["agreement_fp32"] >= min_agree, comp
    assert info["replaced_layers"] == 2 and info["device"] == "cpu"
    cand = data["candidates"][method]
    assert cand["bits_per_param"] == pytest.approx(EXPECTED_BITS[method], rel=1e-12)
    assert data["candidates"]["fp32"]["bits_per_param"] == 32.0
    assert cand["size_bytes"] < data["candidates"]["fp32"]["size_bytes"]
    if method == "bnb_nf4":
        assert (info["quant_type"], info["blocksize"], info["double_quant"]) == ("nf4", 64, True)
        assert info["weight_bits_per_param"] == pytest.approx((422_880 + 11_376) / 100_992)
    else:
        assert info["threshold"] == 6.0 and 0.0 <= info["outlier_cols_frac_mean"] <= 1.0
    rows = list(csv.DictReader((run_dir / "tables" / "layer_error.csv").open()))
    assert [r["layer"] for r in rows] == ["fc1", "fc2"]
    for row in rows:
        assert float(row["sqnr_db"]) > (30 if method == "bnb_int8" else 12)
        assert float(row["cosine"]) > 0.98
        if method == "bnb_int8":
            assert 0.0 <= float(row["outlier_cols_frac"]) <= 1.0
    assert info["layer_error_min_sqnr_db"] == pytest.approx(min(float(r["sqnr_db"]) for r in rows))


@pytest.mark.parametrize("method", ["bnb_int8", "bnb_nf4"])
def test_artifact_loads_back_and_reproduces_the_measured_accuracy(sweep, method):
    import torch

    from quantexp.models import load_model
    from quantexp.models.cnn.config import CNNConfig

    tmp, results = sweep
    data, _ = results[method]
    cand = data["candidates"][method]
    model = load_artifact(Path(cand["artifact"]))
    # The same fp32 model and test split, from the run's cache (no retraining).
    bundle = load_model(CNNConfig(name="cnn", dataset="mnist5k", n_train=1000, epochs=1, lr=0.003),
                        0, tmp / "cache")
    assert bundle.from_cache
    with torch.inference_mode():
        preds = torch.cat([model(x).argmax(1) for (x,), _ in bundle.test.batches(250)])
    assert float((preds == bundle.test.labels).float().mean()) == pytest.approx(cand["accuracy"])
    fmt = cand["export.format"]
    assert fmt == "torchscript" or fmt.startswith("torch.save pickle")


def test_mlflow_holds_metrics_params_and_the_layer_table(sweep):
    from mlflow.tracking import MlflowClient

    tmp, _ = sweep
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("quantexp")
    children = [r for r in client.search_runs([experiment.experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["method.name"] for r in children) == ["bnb_int8", "bnb_nf4"]
    for run in children:
        assert run.info.status == "FINISHED"
        for metric in ("candidate.accuracy_pct", "fp32.accuracy_pct", "candidate.bits_per_param",
                       "candidate.latency.p50_ms", "candidate.size_bytes", "vs_fp32.speedup"):
            assert metric in run.data.metrics
        # the method's numeric facts are metrics (they chart), the rest params
        metrics = run.data.metrics
        assert metrics["method.replaced_layers"] == 2
        assert metrics["method.layer_error_min_sqnr_db"] > 10
        assert metrics["method.weight_memory_ratio_vs_fp32"] < 0.5
        assert "result.method.replaced_layers" not in run.data.params
        tables = [a.path for a in client.list_artifacts(run.info.run_id, "tables")]
        assert tables == ["tables/layer_error.csv"]
        local = client.download_artifacts(run.info.run_id, "tables/layer_error.csv", str(tmp / run.info.run_id))
        with open(local) as fh:
            assert [r["layer"] for r in csv.DictReader(fh)] == ["fc1", "fc2"]


def test_model_with_nothing_to_quantize_is_refused_before_any_work(sweep):
    """In-process through the pipeline (the CLI prints any ConfigError as its one
    line): the refusal comes right after the (cached) model loads, before the fp32
    export, calibration or quantization."""
    from hydra import compose, initialize_config_dir

    from quantexp import pipeline
    from quantexp.config import ConfigError, build, register_configs

    tmp, _ = sweep
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        exp = build(compose("config", overrides=["method=bnb_nf4", "method.skip_modules=[fc]",
                                                  *MODEL, *TINY]))
    out = tmp / "refused"
    with pytest.raises(ConfigError) as exc:
        pipeline.run(exp, out, tmp / "cache")
    assert str(exc.value) == ("method=bnb_nf4 has nothing to quantize in model cnn: all 2 Linear "
                              "layers match method.skip_modules=['fc']")
    assert not (out / "artifacts").exists()  # no fp32 export, no quantization
