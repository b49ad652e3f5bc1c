"""exporter=tflite on a real, quickly trained SmallCNN: litert-torch converts it, the
LiteRT interpreter runs the file; dynamic-range and full-integer int8 come from
ai-edge-quantizer (full int8 calibrated on a real calibration draw). Plus the
config rules (method -> TFLite quantization) and the one-line unsupported-op error."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from quantexp.config import ConfigError, Granularity, HardwareConfig, build, register_configs
from quantexp.exporters.tflite.config import TFLiteExporterConfig, TFLiteQuantization
from quantexp.models.cnn.config import CNNConfig

pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (uv sync --extra tflite)")
pytest.importorskip("litert_torch", reason="needs the tflite extra (uv sync --extra tflite)")

ROOT = Path(__file__).resolve().parents[2]
BATCH = 16
# Accuracy of an int8 artifact on the 200 test items may differ from the fp32
# artifact by at most this (3 items); measured: 0-1 items.
INT8_ACCURACY_TOLERANCE = 0.015
# fp32 TFLite vs PyTorch: XNNPACK reorders float sums; measured max error ~5e-7.
FP32_ATOL = 1e-4


def exporter_cfg(quantization: str) -> TFLiteExporterConfig:
    return TFLiteExporterConfig(quantization=TFLiteQuantization(quantization),
                                granularity=Granularity.per_channel, batch_size=BATCH)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from quantexp.hardware import probe_host
    from quantexp.models import load_model
    from quantexp.quant.calibration import draw_calibration

    tmp = tmp_path_factory.mktemp("tflite")
    # 500 items x 2 epochs: ~0.74 test accuracy, so agreement/accuracy tests mean something.
    bundle = load_model(CNNConfig(name="cnn", dataset="mnist5k", n_train=500, n_test=200,
                                  epochs=2, lr=3e-3), 0, tmp / "cache")
    host = probe_host(HardwareConfig(name="cpu", threads=2))
    calibration = draw_calibration(bundle.train, bundle.test, 128, seed=0)
    return {"bundle": bundle, "host": host, "calibration": calibration, "out": tmp / "artifacts",
            "exports": {}}


def export(setup, quantization: str):
    """One export per scheme per module; int8 exports share one exporter with the fp32
    export, as in the pipeline (fp32 reference first, then the method's artifact)."""
    from quantexp.exporters import get_exporter

    if quantization not in setup["exports"]:
        if "exporter" not in setup:
            setup["exporter"] = get_exporter("tflite")(exporter_cfg("full_int8"), setup["host"])
        exporter = setup["exporter"]
        bundle = setup["bundle"]
        exporter.cfg = exporter_cfg(quantization if quantization != "none" else "full_int8")
        # The fp32 reference is bundle.model itself; a method's export gets another module
        # (here a copy standing in for the torch.ao model, which TFLite never converts).
        model = bundle.model if quantization == "none" else copy.deepcopy(bundle.model)
        setup["exports"][quantization] = exporter.export(model, bundle, setup["out"], quantization,
                                                         calibration=setup["calibration"])
    return setup["exports"][quantization]


def artifact_accuracy(setup, exported) -> float:
    from quantexp.analysis.accuracy import accuracy
    from quantexp.runtimes import predict

    bundle = setup["bundle"]
    return accuracy(predict(exported.runtime, bundle.test.inputs, 256), bundle.test.labels.numpy())


def test_fp32_export_runs_in_litert_and_matches_torch(setup):
    bundle = setup["bundle"]
    exported = export(setup, "none")
    assert exported.artifact.suffix == ".tflite" and exported.artifact.stat().st_size > 0
    assert exported.runtime.kind == "litert" and exported.runtime.batch == BATCH
    info = exported.info
    assert info["tflite.quantization"] == "none" and info["tflite.io"] == "float32 -> float32"
    assert info["parity.max_abs_err"] <= FP32_ATOL and info["parity.top1_agreement"] == 1.0
    assert info["parity.cosine_min"] > 0.99999
    # 37 items: two full graph batches and a padded one; 16: exactly one invoke.
    for n in (37, BATCH, 1):
        x = bundle.test.inputs[0][:n]
        with torch.no_grad():
            ref = bundle.model(x)
        out = exported.runtime(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=FP32_ATOL, rtol=0)
    assert exported.param_bits / bundle.num_parameters == pytest.approx(32.0)
    assert exported.export_time_s > 0 and info["tflite.convert_s"] > 0
    # Evaluated through the runtime: fp32 TFLite predicts what PyTorch predicts.
    from quantexp.runtimes import TorchRuntime, predict

    assert np.array_equal(predict(exported.runtime, bundle.test.inputs, 256),
                          predict(TorchRuntime(bundle.model), bundle.test.inputs, 256))


@pytest.mark.parametrize("quantization", ["dynamic_int8", "full_int8"])
def test_int8_export_is_smaller_int8_and_accurate(setup, quantization):
    bundle = setup["bundle"]
    fp32, int8 = export(setup, "none"), export(setup, quantization)
    info = int8.info
    assert info["tflite.quantization"] == quantization
    # The fp32 conversion is reused, not redone; its time is part of the artifact's.
    assert info["tflite.convert_reused"] is True
    assert int8.export_time_s >= info["tflite.convert_s"]
    assert int8.artifact.stat().st_size < fp32.artifact.stat().st_size / 3
    assert "int8" in info["tflite.tensor_dtypes"]
    bits = int8.param_bits / bundle.num_parameters
    assert 8.0 < bits < 9.0  # int8 weights + int32/fp32 biases + per-channel scales
    if quantization == "full_int8":
        assert info["tflite.io"] == "int8 -> int8"
        assert "float32" not in info["tflite.tensor_dtypes"]
        assert info["tflite.calibration_items"] == len(setup["calibration"])
    else:
        assert info["tflite.io"] == "float32 -> float32"
    assert info["parity.top1_agreement"] >= 0.95 and info["parity.cosine_mean"] > 0.99
    fp32_acc, int8_acc = artifact_accuracy(setup, fp32), artifact_accuracy(setup, int8)
    assert fp32_acc > 0.6  # the model learned something, so the comparison means something
    assert abs(int8_acc - fp32_acc) <= INT8_ACCURACY_TOLERANCE


def test_exporter_load_reads_back_an_artifact(setup):
    from quantexp.exporters import get_exporter

    path = export(setup, "full_int8").artifact
    loaded = get_exporter("tflite")(exporter_cfg("full_int8"), setup["host"]).load(path)
    x = setup["bundle"].test.inputs[0][:20]
    torch.testing.assert_close(loaded.runtime(x), export(setup, "full_int8").runtime(x))
    assert loaded.param_bits == export(setup, "full_int8").param_bits


def test_full_int8_without_calibration_is_refused(setup):
    from quantexp.exporters import get_exporter

    exporter = get_exporter("tflite")(exporter_cfg("full_int8"), setup["host"])
    bundle = setup["bundle"]
    with pytest.raises(ConfigError, match="calibration"):
        exporter.export(copy.deepcopy(bundle.model), bundle, setup["out"], "x", calibration=None)


class CumProd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, pixels):
        return torch.cumprod(self.fc(pixels.flatten(1)), dim=1)


def test_unsupported_op_fails_in_one_line_naming_exporter_and_op(setup, tmp_path):
    from quantexp.exporters import get_exporter
    from quantexp.exporters.base import ExportError

    bundle = copy.copy(setup["bundle"])
    bundle.model, bundle.name = CumProd().eval(), "cumprod_net"
    exporter = get_exporter("tflite")(exporter_cfg("none"), setup["host"])
    with pytest.raises(ExportError) as err:
        exporter.export(bundle.model, bundle, tmp_path, "fp32")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("exporter=tflite cannot convert cumprod_net (cnn): ")
    assert "op aten.cumprod.default has no LiteRT lowering" in message
    assert isinstance(err.value, ConfigError)  # run.py prints it as one line, exit 2


# ------------------------------------------------------------------- config
@pytest.fixture(scope="module")
def conf():
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        yield


@pytest.mark.parametrize("method,expected", [("fp32", "none"), ("ptq_dynamic", "dynamic_int8"),
                                             ("ptq_static", "full_int8")])
def test_auto_quantization_follows_the_method(conf, method, expected):
    exp = build(compose("config", overrides=["exporter=tflite", f"method={method}",
                                             "bench.batch_size=8"]))
    assert exp.exporter.quantization == TFLiteQuantization(expected)
    assert exp.exporter.batch_size == 8  # the graph's batch is the benchmark's
    assert exp.exporter.granularity == exp.precision.granularity


@pytest.mark.parametrize("overrides,message", [
    (["method=fp32", "exporter.quantization=full_int8"],
     ("exporter.quantization=full_int8 does not match method=fp32 (deployed as none); "
      "use exporter.quantization=auto or method=ptq_static")),
    (["method=ptq_dynamic", "precision=fp16"],
     ("exporter=tflite deploys method=ptq_dynamic as dynamic_int8; precision=fp16 is not "
      "supported; valid precision: int8")),
    (["method=fp32", "hardware=cuda"],
     "hardware=cuda cannot deploy with exporter=tflite; valid exporters for cuda: "),
])
def test_incompatible_tflite_combinations_are_refused(conf, overrides, message):
    with pytest.raises(ConfigError) as err:
        build(compose("config", overrides=["exporter=tflite", *overrides]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
