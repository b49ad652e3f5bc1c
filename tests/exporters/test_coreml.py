"""exporter=coreml on any OS: real coremltools conversions of the real SmallCNN
(untrained), the saved packages read back as specs, their ops and weight dtypes,
bits/param from the stored weights, the ANE compatibility report, the torch.ao
int8 lowering, and the refusals. Prediction needs macOS: on Linux the Exported
has no runtime and says why."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantexp.config import CalibrationConfig, DType, HardwareConfig, PrecisionConfig
from quantexp.exporters.base import ExportError
from quantexp.exporters.coreml.ane_report import ane_report
from quantexp.exporters.coreml.config import (
    ComputePrecision,
    CoreMLExporterConfig,
    DeploymentTarget,
    WeightCompression,
)
from quantexp.exporters.coreml.exporter import CoreMLExporter, CoreMLValidationError, validate_package
from quantexp.exporters.coreml.mlprogram import inspect_package, read_blob
from quantexp.hardware.probe import probe_host
from quantexp.methods.ptq_static.config import PTQStaticConfig
from quantexp.models.base import ModelBundle, Split
from quantexp.models.cnn.family import SmallCNN

LINUX_ONLY = pytest.mark.skipif(sys.platform == "darwin", reason="checks what a non-macOS host gets")


def bundle_of(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> ModelBundle:
    n = inputs[0].shape[0]
    split = Split(inputs, torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1)),
                  torch.arange(n))
    return ModelBundle(model.eval(), "tiny", "cnn", split, split, 10, names, 0.0)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    pixels = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return bundle_of(SmallCNN([16, 32], 64), (pixels,), ["pixels"])


@pytest.fixture(scope="module")
def host():
    return probe_host(HardwareConfig(name="ane"))


def export(bundle, host, out: Path, tag: str, model=None, **cfg) -> object:
    model = copy.deepcopy(bundle.model) if model is None else model
    return CoreMLExporter(CoreMLExporterConfig(**cfg), host).export(model, bundle, out, tag)


@pytest.fixture(scope="module")
def fp16(cnn, host, tmp_path_factory):
    return export(cnn, host, tmp_path_factory.mktemp("fp16"), "fp16")


@pytest.fixture(scope="module")
def int8(cnn, host, tmp_path_factory):
    return export(cnn, host, tmp_path_factory.mktemp("int8"), "int8",
                  weight_compression=WeightCompression.int8, weight_threshold=0)


def test_fp16_package_reloads_as_an_ml_program(fp16, cnn):
    import coremltools as ct

    spec = ct.utils.load_spec(str(fp16.artifact))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == ["pixels"]
    summary = inspect_package(fp16.artifact)
    counts = summary.op_counts()
    assert counts["conv"] == 2 and counts["linear"] == 2 and counts["relu"] == 3
    assert fp16.info["coreml.op_counts"] == counts
    # fp16 compute precision: every weight stored as fp16, every compute op fp16
    assert {v.dtype for v in summary.dense_float_weights} == {"FLOAT16"}
    assert summary.output_dtypes() == {"FLOAT16": sum(counts.values())}
    assert not summary.decompression_ops
    # bits/param read from the stored weights: exactly 16 for an fp16 package
    assert fp16.param_bits / cnn.num_parameters == pytest.approx(16.0)
    assert summary.inputs[0].shape == (1, 1, 28, 28) and summary.inputs[0].flexible is None


@LINUX_ONLY
def test_no_prediction_off_macos(fp16):
    assert fp16.runtime is None
    assert "Core ML prediction needs macOS" in fp16.not_measured
    assert fp16.info["runtime"] == "coreml (not run)"


def test_int8_package_stores_int8_weights(int8, fp16, cnn):
    summary = inspect_package(int8.artifact)
    assert summary.op_counts(include_weights=True)["constexpr_affine_dequantize"] == 4
    data = [v for v in summary.compressed_values if v.role == "quantized_data"]
    assert {v.dtype for v in data} == {"INT8"} and len(data) == 4
    weights = sum(p.numel() for name, p in cnn.model.named_parameters() if name.endswith("weight"))
    assert sum(v.nbytes for v in data) == weights  # one byte per weight
    assert int8.info["coreml.compressed_bytes"] > weights
    assert int8.param_bits < 0.55 * fp16.param_bits
    assert 8.0 < int8.param_bits / cnn.num_parameters < 8.2  # int8 + fp16 scales and biases
    assert int8.info["coreml.op_counts"] == fp16.info["coreml.op_counts"]  # same compute graph


@pytest.mark.parametrize("compression,target,op,dtypes", [
    (WeightCompression.palettize4, DeploymentTarget.iOS17, "constexpr_lut_to_dense", {"UINT8"}),
    (WeightCompression.int4_block, DeploymentTarget.iOS18, "constexpr_blockwise_shift_scale",
     {"INT4"}),
])
def test_4bit_compressions(cnn, host, tmp_path, fp16, compression, target, op, dtypes):
    exported = export(cnn, host, tmp_path, compression.value, weight_compression=compression,
                      deployment_target=target, weight_threshold=0)
    summary = inspect_package(exported.artifact)
    assert op in summary.op_counts(include_weights=True)
    data = [v for v in summary.compressed_values if v.role in ("indices", "data")]
    assert data and {v.dtype for v in data} == dtypes
    # 4-bit data: half a byte per compressed weight
    assert sum(v.nbytes for v in data) == sum(
        int(np.prod(v.shape)) * (1 if v.dtype == "UINT8" else 0.5) for v in data)
    assert exported.param_bits < 0.4 * fp16.param_bits


def test_ane_report_is_clean_for_the_friendly_cnn(fp16):
    report_json = json.loads(next(p for n, p in fp16.reports.items() if n.endswith(".json"))
                             .read_text())
    assert report_json["verdict"].startswith("eligible")
    assert report_json["findings"] == [] and report_json["ops_flagged"] == 0
    assert report_json["compute_units"] == "cpu_and_ne"
    assert "not measured on this host" in report_json["placement"] or sys.platform == "darwin"
    md = next(p for n, p in fp16.reports.items() if n.endswith(".md")).read_text()
    assert "conv: 2" in md


class Unfriendly(nn.Module):
    """Planted ANE problems: an embedding lookup (gather), a dilated convolution."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.conv = nn.Conv1d(8, 8, 3, dilation=2, padding=2)
        self.head = nn.Linear(8, 10)

    def forward(self, tokens):
        x = self.embed(tokens).transpose(1, 2)
        return self.head(torch.relu(self.conv(x)).mean(dim=2))


def test_ane_report_flags_planted_problems(host, tmp_path):
    tokens = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(0))
    bundle = bundle_of(Unfriendly(), (tokens,), ["tokens"])
    exported = export(bundle, host, tmp_path, "unfriendly", flexible_batch=True,
                      compute_precision=ComputePrecision.fp32)
    report = json.loads(exported.reports["unfriendly.ane_report.json"].read_text())
    by_check = {f["check"]: f for f in report["findings"]}
    assert by_check["dynamic_shape"]["severity"] == "blocker"
    assert "tokens" in by_check["dynamic_shape"]["examples"][0]
    assert by_check["fp32_compute"]["ops"].get("conv") == 1
    assert any(f["check"] == "unsupported_op" and "gather" in f["ops"] for f in report["findings"])
    assert by_check["dilated_conv"]["ops"] == {"conv": 1}
    assert report["verdict"].startswith("not expected on the ANE")
    summary = inspect_package(exported.artifact)
    assert summary.inputs[0].flexible.startswith("range")
    assert {v.dtype for v in summary.dense_float_weights} == {"FLOAT32"}
    # the same package with CPU-only compute units: a blocker of its own
    assert "compute_units" in ane_report(summary, "cpu_only", "fp32", "iOS17").checks()


def test_ptq_static_model_keeps_its_int8_weights_and_activation_scales(cnn, host, tmp_path):
    from quantexp.methods.ptq_static.method import PTQStatic

    precision = PrecisionConfig(name="int8", weight_dtype=DType.int8, activation_dtype=DType.int8)
    method = PTQStatic(PTQStaticConfig(calibration=CalibrationConfig(size=32)), precision, host)
    quantized = method.quantize(cnn, cnn.test).model
    exported = export(cnn, host, tmp_path, "ptq_static", model=quantized)
    summary = inspect_package(exported.artifact)
    counts = summary.op_counts()
    assert counts["quantize"] == counts["dequantize"] == exported.info[
        "coreml.lowering.activation_quantize_points"] >= 4
    assert exported.info["coreml.lowering.lowered_modules"] == {"ConvReLU2d": 2, "LinearReLU": 1,
                                                                 "Linear": 1}
    # The int8 values in the package are torch.ao's, byte for byte.
    stored = {v.op: np.frombuffer(read_blob(summary, v), dtype=np.int8)
              for v in summary.compressed_values if v.role == "quantized_data"}
    torch_int8 = sorted(m.weight().int_repr().flatten().numpy().tobytes()
                        for m in quantized.modules() if hasattr(m, "weight") and callable(m.weight))
    assert sorted(a.tobytes() for a in stored.values()) == torch_int8
    assert exported.info["coreml.lowering.max_abs_diff"] < 0.05
    report = json.loads(exported.reports["ptq_static.ane_report.json"].read_text())
    assert "activation_quantization" in {f["check"] for f in report["findings"]}


def test_dynamic_lstm_lowering_keeps_the_quantized_numbers():
    from torch.ao.quantization import quantize_dynamic

    from quantexp.exporters.coreml.lowering import is_torch_ao_quantized, lower_torch_ao
    from quantexp.models.rnn.family import LSTMClassifier

    torch.manual_seed(0)
    model = LSTMClassifier().eval()
    quantized = quantize_dynamic(copy.deepcopy(model), {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    assert is_torch_ao_quantized(quantized) and not is_torch_ao_quantized(model)
    lowered, info = lower_torch_ao(quantized)
    assert info["lowered_modules"] == {"LSTM": 1, "Linear": 1}
    assert info["int8_weights"] == 1 and info["rnn_layers_dequantized"] == 1
    assert not is_torch_ao_quantized(lowered)
    # the lowered LSTM holds exactly torch.ao's int8 weights, dequantized
    w = quantized.lstm._weight_bias()["weight"]["weight_ih_l0"]
    assert torch.equal(lowered.lstm.weight_ih_l0, w.dequantize())
    rows = torch.rand(8, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (quantized(rows) - lowered(rows)).abs().max() < 0.05


class Erfinv(nn.Module):
    def forward(self, pixels):
        return torch.erfinv(torch.tanh(pixels.flatten(1)[:, :10]))


def test_unconvertible_op_names_the_op_and_the_exporter(host, tmp_path):
    bundle = bundle_of(Erfinv(), (torch.rand(4, 1, 28, 28),), ["pixels"])
    with pytest.raises(ExportError, match=r"exporter=coreml .*cannot convert op 'erfinv'"):
        export(bundle, host, tmp_path, "erfinv")


def test_validation_refuses_a_package_that_is_not_what_was_asked(fp16):
    summary = inspect_package(fp16.artifact)
    validate_package(summary, ComputePrecision.fp16, WeightCompression.none, expect_int8=False)
    with pytest.raises(CoreMLValidationError, match="not FLOAT32"):
        validate_package(summary, ComputePrecision.fp32, WeightCompression.none, expect_int8=False)
    with pytest.raises(CoreMLValidationError, match="left no compressed weight"):
        validate_package(summary, ComputePrecision.fp16, WeightCompression.int8, expect_int8=False)


# ------------------------------------------------------- configuration refusals
CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_build(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from quantexp.config import build, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return build(compose("config", overrides=overrides))


def test_hardware_ane_selects_coreml_with_neural_engine_units():
    exp = compose_build(["hardware=ane", "method=ptq_static"])
    assert exp.exporter.name == "coreml" and exp.exporter.compute_units is None
    assert exp.exporter.compute_precision == ComputePrecision.fp16
    exp = compose_build(["hardware=ane", "method=fp32"])
    assert exp.method.name == "fp32" and exp.exporter.name == "coreml"
    exp = compose_build(["hardware=cpu", "exporter=coreml"])  # Core ML on the CPU is allowed too
    assert exp.exporter.name == "coreml"


@pytest.mark.parametrize("overrides,message", [
    (["hardware=ane", "exporter=none"],
     "hardware=ane cannot deploy with exporter=none; valid exporters for ane: coreml"),
    (["hardware=ane", "exporter.compute_precision=fp32"], "valid compute_precision for ane: fp16"),
    (["hardware=ane", "exporter.compute_units=cpu_only"], "valid compute_units for ane: cpu_and_ne"),
    (["hardware=ane", "method=fp32", "exporter.weight_compression=int4_block"],
     "valid deployment_target values for int4_block: iOS18, macOS15"),
    (["hardware=ane", "exporter.weight_compression=int8"],
     "method=ptq_static brings its own quantized weights"),
])
def test_refused_up_front(overrides, message):
    from quantexp.config import ConfigError

    with pytest.raises(ConfigError) as info:
        compose_build(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)
