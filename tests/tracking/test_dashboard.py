"""What a user sees in MLflow after one run: the experiment opens as a model-training
experiment, metrics under candidate./fp32./vs_fp32. with accuracy in percent, enum params
as their value, the method's numbers as metrics, the git commit, the summary as the
run's description, the test split as the run's dataset, the deployed model as an
MLflow model with a flavour, and a link to the run printed at the end."""

from __future__ import annotations

import pytest

from tests.run_api import run_api

TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "+debug=tiny", "method=ptq_static",
        "method.calibration.size=32"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("dashboard")
    data = run_api(TINY, tmp)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return data, client, client.get_run(data["mlflow_run_id"])


def test_experiment_kind_and_link(tracked):
    from quantexp.tracking.store import run_url, ui_base

    data, client, run = tracked
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run_url(ui_base(client.tracking_uri), experiment.experiment_id, run.info.run_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        "?workflowType=machine_learning")
    assert ui_base("http://10.0.0.5:5001/") == "http://10.0.0.5:5001"  # a tracking server is its own UI


def test_metric_names_units_and_params(tracked):
    data, _, run = tracked
    metrics, params = run.data.metrics, run.data.params
    cand, fp32 = data["candidates"]["ptq_static"], data["candidates"]["fp32"]
    assert metrics["candidate.accuracy_pct"] == pytest.approx(100 * cand["accuracy"])
    assert metrics["fp32.accuracy_pct"] == pytest.approx(100 * fp32["accuracy"])
    assert metrics["vs_fp32.accuracy_delta_pts"] == pytest.approx(100 * data["comparison"]["accuracy_delta"])
    assert metrics["vs_fp32.speedup"] == pytest.approx(data["comparison"]["speedup_p50"])
    assert metrics["candidate.latency.p50_ms"] == pytest.approx(cand["latency"]["p50_ms"])
    # one name per figure: no unprefixed duplicates of the candidate's or fp32's accuracy
    assert not {"accuracy", "accuracy_fp32", "fp32.accuracy", "latency.p50_ms"} & set(metrics)
    assert params["precision.weight_dtype"] == "int8" and params["method.calibration.observer"] == "histogram"
    assert metrics["method.quantized_layers"] == data["method"]["quantized_layers"]
    assert params["result.method.path"] == "fx_graph_mode" and "result.method.quantized_layers" not in params


def test_provenance_description_dataset_and_model(tracked):
    data, client, run = tracked
    tags = run.data.tags
    commit = data["provenance"]["quantexp.git_commit"]
    if commit != "unknown":
        assert tags["mlflow.source.git.commit"] == commit.removesuffix("+dirty")
    assert "ptq_static" in tags["mlflow.note.content"] and "speed-up" in tags["mlflow.note.content"]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "mnist5k-test" and "[" in dataset.dataset.profile
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "test"
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert model.name == "cnn-ptq_static" and model.tags["quantexp.flavour"] == "pytorch"
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/fp32.pt"]  # the reference


def test_the_logged_model_loads_back_and_predicts_as_the_run_did(tracked):
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch

    from quantexp.api import compose, validate
    from quantexp.models import load_model

    data, client, run = tracked
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    mlflow.set_tracking_uri(client.tracking_uri)
    loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    exp = validate(compose(TINY))
    bundle = load_model(exp.model, exp.seed, data["config"]["cache_dir"])  # the run's cached fp32 model and split
    with torch.inference_mode():
        predicted = loaded(*bundle.test.inputs).argmax(-1).numpy()
    with np.load(data["predictions_path"]) as preds:
        assert np.array_equal(predicted, preds["ptq_static"])
