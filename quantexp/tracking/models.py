"""The deployed artifact as an MLflow model (the run's Models tab), where MLflow has a
flavour for its format: ``mlflow.pytorch`` for the TorchScript (or pickled module) of
``exporter=none``, ``mlflow.onnx`` for ONNX. TFLite and Core ML have no MLflow flavour:
their files stay plain artifacts under ``model/``.

Client API only (``create_logged_model`` -> ``log_model_artifacts`` -> ``finalize`` ->
``log_outputs``): the fluent ``mlflow.<flavour>.log_model`` needs a process-global active
run, which the jobs of a sweep sharing one process must not have. Requirements are
given, not inferred (inference imports the model in a subprocess: seconds per run).
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

from quantexp.tracking.store import retry_locked


def _requirement(package: str) -> str:
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


def save_flavoured(artifact: Path, out: Path) -> str | None:
    """Save ``artifact`` as an MLflow model directory at ``out``; the flavour's name, or
    None when MLflow has no flavour for this format."""
    if artifact.suffix == ".onnx":
        import mlflow.onnx
        import onnx

        mlflow.onnx.save_model(onnx.load(str(artifact)), str(out),
                               pip_requirements=[_requirement("onnx"), _requirement("onnxruntime")])
        return "onnx"
    if artifact.suffix == ".pt":
        import mlflow.pytorch
        import torch

        try:
            model = torch.jit.load(str(artifact), map_location="cpu")
        except RuntimeError:  # the whole-module pickle exporter=none falls back to
            model = torch.load(artifact, weights_only=False, map_location="cpu")
        mlflow.pytorch.save_model(model, str(out), pip_requirements=[_requirement("torch")],
                                  serialization_format="pickle")
        return "pytorch"
    return None


def log_deployed_model(client, experiment_id: str, run_id: str, artifact: Path, name: str,
                       tags: dict[str, str]) -> str | None:
    """Log ``artifact`` as a LoggedModel of the run; its model id, or None (no flavour)."""
    from mlflow.entities import LoggedModelOutput

    with tempfile.TemporaryDirectory(prefix="quantexp-model-") as tmp:
        flavour = save_flavoured(Path(artifact), Path(tmp) / "model")
        if flavour is None:
            return None
        model = retry_locked(client.create_logged_model, experiment_id, name=name, source_run_id=run_id,
                             tags={**tags, "quantexp.flavour": flavour})
        try:
            retry_locked(client.log_model_artifacts, model.model_id, str(Path(tmp) / "model"))
        except Exception:
            retry_locked(client.finalize_logged_model, model.model_id, "FAILED")
            raise
    retry_locked(client.finalize_logged_model, model.model_id, "READY")
    retry_locked(client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


__all__ = ["log_deployed_model", "save_flavoured"]
