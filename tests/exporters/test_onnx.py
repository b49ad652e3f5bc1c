"""exporter=onnx on a real, quickly trained SmallCNN: torch.onnx writes the file,
onnx.checker accepts it, ONNX Runtime runs it and reproduces PyTorch; PyTorch's
static int8 model exports as a real QDQ graph; what cannot convert (PyTorch dynamic
int8, an op without ONNX symbolic, bitsandbytes) or load (missing/corrupt files)
fails in one line naming the exporter and the op or file."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from quantexp.config import (
    ConfigError,
    DType,
    ExperimentConfig,
    GraphOptimization,
    HardwareConfig,
    PrecisionConfig,
    check_compatibility,
)
from quantexp.exporters.base import ExportError
from quantexp.exporters.onnx.config import OnnxExporterConfig
from quantexp.methods.fp32.config import Fp32Config
from quantexp.methods.ptq_dynamic.config import PTQDynamicConfig
from quantexp.methods.ptq_static.config import PTQStaticConfig
from quantexp.models.cnn.config import CNNConfig

# fp32 ONNX in ORT vs PyTorch: float sums reordered; measured max |diff| ~2e-7.
FP32_ATOL = 1e-4
INT8 = PrecisionConfig(name="int8", weight_dtype=DType.int8, activation_dtype=DType.int8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from quantexp.hardware import probe_host
    from quantexp.models import load_model
    from quantexp.quant.calibration import draw_calibration

    tmp = tmp_path_factory.mktemp("onnx")
    # Shared with test_ort_methods.py within a session (same cache key): trained once.
    cache = tmp_path_factory.getbasetemp() / "ort_cnn_cache"
    bundle = load_model(CNNConfig(name="cnn", dataset="mnist5k", n_train=500, n_test=200, epochs=2,
                                  lr=3e-3), 0, cache)
    host = probe_host(HardwareConfig(name="cpu", threads=2))
    calibration = draw_calibration(bundle.train, bundle.test, 64, seed=0)
    return {"bundle": bundle, "host": host, "calibration": calibration, "out": tmp}


def exporter(setup, **kw):
    from quantexp.exporters import get_exporter

    return get_exporter("onnx")(OnnxExporterConfig(**kw), setup["host"])


@pytest.fixture(scope="module")
def fp32(setup):
    return exporter(setup).export(setup["bundle"].model, setup["bundle"], setup["out"], "fp32")


def test_fp32_export_passes_checker_loads_in_ort_and_matches_torch(setup, fp32):
    bundle = setup["bundle"]
    onnx.checker.check_model(onnx.load(str(fp32.artifact)), full_check=True)
    assert fp32.runtime.kind == "onnxruntime" and fp32.info["providers"] == "CPUExecutionProvider"
    assert fp32.info["quantized_nodes"] == 0 and fp32.info["opset"] == 17
    info = fp32.info
    assert info["parity.items"] == 64 and info["parity.max_abs_err"] <= FP32_ATOL
    assert info["parity.cosine"] > 0.99999 and info["parity.top1_agreement"] == 1.0
    # Dynamic batch axis: any evaluation batch size runs.
    for n in (1, 37, 200):
        x = bundle.test.inputs[0][:n]
        with torch.no_grad():
            ref = bundle.model(x)
        torch.testing.assert_close(fp32.runtime(x), ref, atol=FP32_ATOL, rtol=0)
    # Every stored fp32 parameter, nothing else: exactly 32 bits per parameter.
    assert fp32.param_bits == 32 * bundle.num_parameters
    assert fp32.export_time_s > 0 and fp32.load_time_s > 0


def test_session_follows_the_exporter_and_hardware_config(setup):
    import onnxruntime as ort

    exported = exporter(setup, graph_optimization=GraphOptimization.basic, parity_items=0).export(
        setup["bundle"].model, setup["bundle"], setup["out"], "fp32_basic")
    options = exported.runtime.session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == setup["host"].threads == 2
    assert options.inter_op_num_threads == 1
    assert "parity.items" not in exported.info  # parity_items=0 skips the check


def test_ptq_static_model_exports_as_qdq_int8_graph(setup, fp32):
    from quantexp.methods import get_method

    bundle = setup["bundle"]
    quantized = get_method("ptq_static")(PTQStaticConfig(), INT8, setup["host"]).quantize(
        bundle, setup["calibration"])
    exported = exporter(setup).export(quantized.model, bundle, setup["out"], "ptq_static")
    graph = onnx.load(str(exported.artifact)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The weights are int8 tensors in the file (Constant nodes), not fp32.
    int8_weights = [n for n in graph.node if n.op_type == "Constant"
                    and n.attribute[0].t.data_type == onnx.TensorProto.INT8 and len(n.attribute[0].t.dims) > 1]
    assert len(int8_weights) == 4  # conv1, conv2, fc1, fc2
    assert exported.info["quantized_nodes"] > 0
    bits = exported.param_bits / bundle.num_parameters
    assert 8.0 < bits < 9.0  # int8 weights + int32 biases + per-channel scales
    assert exported.artifact.stat().st_size < fp32.artifact.stat().st_size / 2.5
    # ORT's integer kernels vs fbgemm's requantization: logits agree closely, not bit-exactly.
    assert exported.info["parity.top1_agreement"] >= 0.95 and exported.info["parity.cosine"] > 0.999


def test_ptq_dynamic_is_refused_naming_the_op(setup):
    from torch.ao.quantization import quantize_dynamic

    bundle = setup["bundle"]
    # What method=ptq_dynamic builds (torch.ao dynamic int8 Linear layers).
    quantized = quantize_dynamic(copy.deepcopy(bundle.model), {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ExportError) as err:
        exporter(setup).export(quantized, bundle, setup["out"], "ptq_dynamic")
    message = str(err.value)
    assert "\n" not in message and "'quantized::linear_dynamic'" in message
    assert message.startswith("exporter=onnx cannot convert cnn (cnn, ptq_dynamic)")
    assert "method=ort_dynamic" in message
    assert not (setup["out"] / "ptq_dynamic.onnx").exists()


class SpectrumNet(torch.nn.Module):
    """A model with an op the TorchScript ONNX exporter has no symbolic for."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784 // 2 + 1, 10)

    def forward(self, pixels):
        return self.fc(torch.fft.rfft(pixels.flatten(1)).abs())


def test_unsupported_op_fails_in_one_line_naming_exporter_and_op(setup, tmp_path, capfd):
    bundle = copy.copy(setup["bundle"])
    bundle.model, bundle.name = SpectrumNet().eval(), "spectrum_net"
    with pytest.raises(ExportError) as err:
        exporter(setup).export(bundle.model, bundle, tmp_path, "fp32")
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ConfigError)  # run.py: one line, exit 2
    assert message.startswith("exporter=onnx cannot convert spectrum_net (cnn, fp32): operator "
                              "'aten::fft_rfft' has no ONNX symbolic at opset 17")
    assert "torch.onnx.export (TorchScript-based" in message
    # torch's exporter prints the whole Torch IR graph on failure; none of it leaks.
    out, errout = capfd.readouterr()
    assert "Torch IR graph" not in out + errout and "prim::Constant" not in out + errout


def test_bitsandbytes_layers_are_refused(setup):
    bnb = pytest.importorskip("bitsandbytes")
    from quantexp.exporters.onnx.exporter import refuse_unexportable

    model = torch.nn.Sequential(torch.nn.Flatten(), bnb.nn.Linear8bitLt(784, 10, has_fp16_weights=False))
    with pytest.raises(ExportError, match=r"exporter=onnx cannot convert m: 1 \(Linear8bitLt\): "
                                          r"bitsandbytes layers have no ONNX symbolic"):
        refuse_unexportable(model, "m")


# -------------------------------------------------------------- loading
def test_missing_file_is_one_clear_line(setup, tmp_path):
    with pytest.raises(ExportError, match=r"^ONNX model .*nothing\.onnx does not exist$"):
        exporter(setup).load(tmp_path / "nothing.onnx")


def test_corrupt_file_is_one_clear_line(setup, fp32, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf" * 50)
    with pytest.raises(ExportError) as err:
        exporter(setup).load(garbage)
    assert str(err.value).startswith(f"{garbage} is not a readable ONNX model: ")
    assert "\n" not in str(err.value)

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(fp32.artifact.read_bytes()[: fp32.artifact.stat().st_size // 2])
    with pytest.raises(ExportError, match="is not a readable ONNX model|fails the ONNX checker|"
                                          "ONNX Runtime cannot load") as err:
        exporter(setup).load(truncated)
    assert "\n" not in str(err.value)


def test_invalid_graph_fails_the_checker_in_one_line(setup, fp32, tmp_path):
    model = onnx.load(str(fp32.artifact))
    model.graph.node[0].input[0] = "no_such_tensor"  # dangling input
    broken = tmp_path / "dangling.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ExportError, match=r"dangling\.onnx fails the ONNX checker: .*no_such_tensor"):
        exporter(setup).load(broken)


def test_load_reads_back_an_artifact(setup, fp32):
    loaded = exporter(setup).load(fp32.artifact)
    x = setup["bundle"].test.inputs[0][:20]
    torch.testing.assert_close(loaded.runtime(x), fp32.runtime(x))
    assert loaded.param_bits == fp32.param_bits and loaded.runtime.kind == "onnxruntime"


def test_param_bits_count_quantization_parameters(tmp_path):
    """A QDQ weight: int8 values + fp32 scale + int8 zero point per channel counted;
    an int64 shape constant and a scalar that is not a qparam are not."""
    from onnx import TensorProto, helper, numpy_helper

    from quantexp.exporters.onnx.exporter import onnx_param_bits

    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.int8), "w")
    scale = numpy_helper.from_array(np.ones(4, dtype=np.float32), "scale")
    zp = numpy_helper.from_array(np.zeros(4, dtype=np.int8), "zp")
    shape = numpy_helper.from_array(np.array([3, 4], dtype=np.int64), "shape")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [helper.make_node("DequantizeLinear", ["w", "scale", "zp"], ["wf"], axis=0),
             helper.make_node("Reshape", ["wf", "shape"], ["wr"]),
             helper.make_node("MatMul", ["x", "wr"], ["y0"]),
             helper.make_node("Mul", ["y0", "two"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [w, scale, zp, shape, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert onnx_param_bits(model) == 12 * 8 + 4 * 32 + 4 * 8


# --------------------------------------------------------------- config
def experiment(method, precision="fp32", hardware="cpu", **exporter_kw):
    return ExperimentConfig(model=CNNConfig(name="cnn", dataset="mnist5k"), method=method,
                            precision=PrecisionConfig(name=precision), hardware=HardwareConfig(name=hardware),
                            exporter=OnnxExporterConfig(**exporter_kw))


def test_compatibility_allows_fp32_and_ptq_static_refuses_ptq_dynamic():
    check_compatibility(experiment(Fp32Config()))
    check_compatibility(experiment(PTQStaticConfig(), precision="int8"))
    with pytest.raises(ConfigError, match=r"method=ptq_dynamic cannot run with exporter=onnx; "
                                          r"valid exporter values for ptq_dynamic: coreml, none, tflite"):
        check_compatibility(experiment(PTQDynamicConfig(), precision="int8"))


@pytest.mark.parametrize("kw,message", [({"opset": 11}, r"exporter.opset must be in \[13, 20\]"),
                                        ({"parity_items": -1}, "exporter.parity_items must be >= 0"),
                                        ({"fp32_tolerance": 0.0}, "exporter.fp32_tolerance must be > 0")])
def test_exporter_values_are_checked(kw, message):
    with pytest.raises(ConfigError, match=message):
        experiment(Fp32Config(), **kw).validate()


def test_cuda_without_the_cuda_provider_is_refused():
    import onnxruntime as ort

    from quantexp.hardware import HardwareUnavailable
    from quantexp.runtimes.onnx_runtime import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("cuda")[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(HardwareUnavailable, match="needs onnxruntime's CUDAExecutionProvider"):
            providers_for("cuda")
