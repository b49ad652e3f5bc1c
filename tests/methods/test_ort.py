"""ort_dynamic / ort_static: config refusals (before any model loads), the calibration
reader, and real ONNX Runtime quantization of the exported fp32 SmallCNN: QDQ and
QOperator graphs with int8 weights, integer ops for dynamic, per-node error tables,
and an entropy calibration that really searches thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir

from quantexp.config import (
    ConfigError,
    DType,
    GraphOptimization,
    HardwareConfig,
    PrecisionConfig,
    build,
    register_configs,
)
from quantexp.exporters.onnx.config import OnnxExporterConfig
from quantexp.methods.ort.config import (
    ORT_DYNAMIC_OP_TYPES,
    ORT_QDQ_OP_TYPES,
    ORT_QOPERATOR_OP_TYPES,
    CalibrateMethod,
    IntType,
    OrtDynamicConfig,
    OrtQuantFormat,
    OrtStaticConfig,
)
from quantexp.models.base import Split
from quantexp.models.cnn.config import CNNConfig

ROOT = Path(__file__).resolve().parents[2]
INT8 = PrecisionConfig(name="int8", weight_dtype=DType.int8, activation_dtype=DType.int8)
# int8 vs fp32 ONNX accuracy on 200 test items: at most 3 items apart (measured: 0-1).
INT8_ACCURACY_TOLERANCE = 0.015


# --------------------------------------------------------------- config
@pytest.fixture(scope="module")
def conf():
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        yield


@pytest.mark.parametrize("overrides,message", [
    (["method=ort_static"], ("method=ort_static cannot run with exporter=none; valid exporter values "
                            "for ort_static: onnx")),
    (["method=ort_dynamic", "exporter=onnx", "hardware=cuda"],
     "method=ort_dynamic cannot run with hardware=cuda; valid hardware values for ort_dynamic: cpu"),
    (["method=ort_static", "exporter=onnx", "precision=fp16"],
     "method=ort_static cannot run with precision=fp16; valid precision values for ort_static: int8"),
    (["method=ort_static", "exporter=onnx", "method.activation_type=s8", "method.weight_type=u8"],
     ("method.activation_type=s8 with method.weight_type=u8 is not supported by ONNX Runtime "
     "quantization; valid activation/weight pairs: u8/s8, u8/u8, s8/s8")),
    (["method=ort_static", "exporter=onnx", "method.percentile=99.9"],
     "method.percentile only applies to calibrate_method=percentile, not minmax"),
    (["method=ort_static", "exporter=onnx", "method.graph_optimization=all"],
     "method.graph_optimization=all writes hardware-specific layout ops"),
    (["method=ort_dynamic", "exporter=onnx", "method.op_types=[MatMul,Softmax]"],
     "method.op_types: Softmax cannot be quantized by method=ort_dynamic; valid op types: Attention, Conv"),
    (["method=ort_static", "exporter=onnx", "method.quant_format=qoperator", "method.op_types=[LayerNormalization]"],
     "method.op_types: LayerNormalization have no quantized operator for method.quant_format=qoperator"),
    (["method=ort_static", "exporter=onnx", "method.op_types=[]"], "method.op_types: (empty list)"),
    (["method=ort_static", "exporter=onnx", "method.float_output_op_types=[Matmul]"],
     "method.float_output_op_types: Matmul are not op types ORT quantizes"),
])
def test_bad_settings_are_refused_in_one_line(conf, overrides, message):
    with pytest.raises(ConfigError) as err:
        build(compose("config", overrides=overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("key,value,valid", [("calibrate_method", "kl", "minmax, entropy, percentile"),
                                             ("quant_format", "qdq8", "qdq, qoperator"),
                                             ("weight_type", "int8", "s8, u8"),
                                             ("graph_optimization", "max", "disabled, basic, extended, all")])
def test_typos_in_enums_are_refused_by_the_schema(key, value, valid):
    from omegaconf import OmegaConf, ValidationError

    with pytest.raises(ValidationError, match=rf"Invalid value '{value}', expected one of \[{valid}\]"):
        OmegaConf.merge(OmegaConf.structured(OrtStaticConfig), {key: value})


def test_defaults_compose(conf):
    exp = build(compose("config", overrides=["method=ort_static", "exporter=onnx"]))
    m = exp.method
    assert (m.quant_format, m.activation_type, m.weight_type) == (OrtQuantFormat.qdq, IntType.u8, IntType.s8)
    assert m.calibrate_method == CalibrateMethod.minmax and m.reduce_range is None
    assert m.per_channel is True and m.matmul_const_b_only is True
    assert exp.exporter.graph_optimization == GraphOptimization.all and exp.exporter.opset == 17


def test_op_type_lists_match_the_installed_onnxruntime():
    from onnxruntime.quantization.registry import (
        IntegerOpsRegistry,
        QDQRegistry,
        QLinearOpsRegistry,
    )

    assert ORT_QOPERATOR_OP_TYPES == set(QLinearOpsRegistry)
    assert ORT_QDQ_OP_TYPES == set(QDQRegistry) | set(QLinearOpsRegistry)
    assert ORT_DYNAMIC_OP_TYPES == set(IntegerOpsRegistry)


def test_reduce_range_default_follows_the_cpu():
    from quantexp.hardware.cpu import CpuInfo
    from quantexp.hardware.probe import HostInfo
    from quantexp.methods.ort.quantize import default_reduce_range

    def host(arch, isa):
        return HostInfo(target="cpu", device="cpu", threads=1, quantized_engine="x86", onednn=True,
                        cpu=CpuInfo(model="m", arch=arch, logical_cores=1, usable_cores=1, isa=isa),
                        os="", python="")

    assert default_reduce_range(host("x86_64", ["avx2", "fma"])) is True       # VPMADDUBSW saturation
    assert default_reduce_range(host("x86_64", ["avx2", "avx512_vnni"])) is False
    assert default_reduce_range(host("x86_64", ["avx2", "avx_vnni"])) is False
    assert default_reduce_range(host("aarch64", ["neon", "neon_dotprod"])) is False


def test_calibration_reader_yields_the_set_in_graph_names_and_dtypes():
    from quantexp.methods.ort.quantize import SplitReader

    ids = torch.arange(70 * 5).reshape(70, 5)
    split = Split((ids, ids % 2), torch.zeros(70, dtype=torch.long), torch.arange(70))
    reader = SplitReader(split, {"input_ids": np.dtype(np.int64), "attention_mask": np.dtype(np.int32)}, 32)
    batches = []
    while (feeds := reader.get_next()) is not None:
        batches.append(feeds)
    assert len(batches) == len(reader) == 3 and [len(b["input_ids"]) for b in batches] == [32, 32, 6]
    assert all(set(b) == {"input_ids", "attention_mask"} for b in batches)
    assert batches[0]["input_ids"].dtype == np.int64 and batches[0]["attention_mask"].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([b["input_ids"] for b in batches]), ids.numpy())
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["attention_mask"], (ids[:32] % 2).numpy())
    with pytest.raises(ValueError, match="takes 1 inputs"):
        SplitReader(split, {"pixels": np.dtype(np.float32)}, 8)


# ------------------------------------------------- real quantization (CNN)
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from quantexp.exporters import get_exporter
    from quantexp.hardware import probe_host
    from quantexp.models import load_model
    from quantexp.quant.calibration import draw_calibration

    tmp = tmp_path_factory.mktemp("ort")
    cache = tmp_path_factory.getbasetemp() / "ort_cnn_cache"  # shared with test_onnx_exporter.py
    bundle = load_model(CNNConfig(name="cnn", dataset="mnist5k", n_train=500, n_test=200, epochs=2,
                                  lr=3e-3), 0, cache)
    host = probe_host(HardwareConfig(name="cpu", threads=2))
    exporter = get_exporter("onnx")(OnnxExporterConfig(), host)
    fp32 = exporter.export(bundle.model, bundle, tmp, "fp32")
    calibration = draw_calibration(bundle.train, bundle.test, 64, seed=0)
    return {"bundle": bundle, "host": host, "exporter": exporter, "fp32": fp32, "cal": calibration,
            "out": tmp, "done": {}}


def quantize(setup, name, cfg):
    from quantexp.methods import get_method

    if name not in setup["done"]:
        method = get_method(cfg.name)(cfg, INT8, setup["host"])
        path, info = method.quantize_artifact(setup["fp32"], setup["bundle"], setup["cal"], setup["out"] / name)
        setup["done"][name] = (path, info, setup["exporter"].load(path))
    return setup["done"][name]


def accuracy(setup, exported) -> float:
    from quantexp.runtimes import predict

    bundle = setup["bundle"]
    return float((predict(exported.runtime, bundle.test.inputs, 256) == bundle.test.labels.numpy()).mean())


def test_static_qdq_has_qdq_nodes_int8_weights_and_keeps_accuracy(setup):
    path, info, exported = quantize(setup, "qdq", OrtStaticConfig(calibrate_method=CalibrateMethod.minmax))
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 9
    weights = {i.name: i for i in graph.initializer}
    int8 = [i for i in weights.values() if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert sorted(i.name for i in int8) == ["conv1.weight_quantized", "conv2.weight_quantized",
                                            "fc1.weight_quantized", "fc2.weight_quantized"]
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 1 for i in weights.values())
    assert info["calibration_items"] == 64 and info["quant_format"] == "qdq"
    assert info["reduce_range"] == (not setup["host"].cpu.has_vnni) and info["reduce_range_auto"]
    bundle = setup["bundle"]
    assert 8.0 < exported.param_bits / bundle.num_parameters < 8.2
    assert path.stat().st_size < setup["fp32"].artifact.stat().st_size / 3
    fp32_acc = accuracy(setup, setup["fp32"])
    assert fp32_acc > 0.6  # the model learned something, so the comparison means something
    assert abs(accuracy(setup, exported) - fp32_acc) <= INT8_ACCURACY_TOLERANCE


def test_static_layer_error_table_has_one_row_per_quantized_node(setup):
    _, info, _ = quantize(setup, "qdq", OrtStaticConfig(calibrate_method=CalibrateMethod.minmax))
    rows = info["tables"]["layer_error"]
    assert [r["layer"] for r in rows] == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert info["layer_error_unmatched"] == 0 and info["layer_error_items"] == 32
    for row in rows:
        # 8-bit: tens of dB; a broken pairing (wrong tensor, pre-ReLU vs post-ReLU) gives < 10 dB.
        assert 20.0 < row["sqnr_db"] < 80.0 and 0.99 < row["cosine"] <= 1.0 and row["max_abs_err"] > 0
    assert rows[0]["compared"] == "after QDQ (+Relu)"


def test_float_output_op_types_leave_those_outputs_unquantized(setup):
    def quantized_outputs(path):
        graph = onnx.load(str(path)).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        return sorted(producers.get(n.input[0], "input") for n in graph.node if n.op_type == "QuantizeLinear")

    default, _, _ = quantize(setup, "qdq", OrtStaticConfig(calibrate_method=CalibrateMethod.minmax))
    assert quantized_outputs(default).count("Gemm") == 2  # cnn default: every output quantized
    floats, info, exported = quantize(setup, "float_gemm", OrtStaticConfig(
        calibrate_method=CalibrateMethod.minmax, float_output_op_types=["Gemm"]))
    assert "Gemm" not in quantized_outputs(floats) and quantized_outputs(floats).count("Conv") == 2
    assert info["float_output_op_types"] == "Gemm"
    assert abs(accuracy(setup, exported) - accuracy(setup, setup["fp32"])) <= INT8_ACCURACY_TOLERANCE


def test_static_qoperator_writes_quantized_operators(setup):
    cfg = OrtStaticConfig(quant_format=OrtQuantFormat.qoperator, per_channel=True)
    path, info, exported = quantize(setup, "qop", cfg)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and "Conv" not in ops
    rows = info["tables"]["layer_error"]
    assert len(rows) == 4 and all(r["sqnr_db"] > 20.0 for r in rows)
    assert rows[0]["compared"] == "dequantized int8 output (+Relu)"
    assert abs(accuracy(setup, exported) - accuracy(setup, setup["fp32"])) <= INT8_ACCURACY_TOLERANCE


def test_entropy_calibration_searches_thresholds(setup):
    """quantize_static's own entropy calibrator (128/128 bins) is MinMax in disguise;
    ours must choose different activation ranges on real data."""
    def activation_scales(path):
        graph = onnx.load(str(path)).graph
        weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        return {n.input[1]: float(weights[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}

    minmax, _, _ = quantize(setup, "qdq", OrtStaticConfig(calibrate_method=CalibrateMethod.minmax))
    entropy, info, exported = quantize(setup, "entropy", OrtStaticConfig(calibrate_method=CalibrateMethod.entropy))
    a, b = activation_scales(minmax), activation_scales(entropy)
    assert a.keys() == b.keys()
    assert any(b[k] < a[k] * 0.99 for k in a)  # some range clipped below the observed max
    assert info["calibrate_method"] == "entropy"
    assert abs(accuracy(setup, exported) - accuracy(setup, setup["fp32"])) <= 0.05


def test_dynamic_uses_integer_ops_on_linear_layers(setup):
    path, info, exported = quantize(setup, "dynamic", OrtDynamicConfig())
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert "ConvInteger" not in ops and "Conv" in ops  # CNN default: ConvInteger is slow (see ort_common)
    assert info["op_types"] == "MatMul"
    rows = info["tables"]["layer_error"]
    assert [r["layer"] for r in rows] == ["/fc1/Gemm", "/fc2/Gemm"]
    assert all(r["sqnr_db"] > 20.0 for r in rows)
    assert abs(accuracy(setup, exported) - accuracy(setup, setup["fp32"])) <= INT8_ACCURACY_TOLERANCE


def test_op_types_matching_no_node_are_refused(setup):
    from quantexp.methods import get_method

    method = get_method("ort_dynamic")(OrtDynamicConfig(op_types=["LSTM"]), INT8, setup["host"])
    with pytest.raises(ConfigError, match=r"method.op_types=\['LSTM'\] matches no node of this model; its "
                                          r"op types that method=ort_dynamic can quantize: Conv, MatMul"):
        method.quantize_artifact(setup["fp32"], setup["bundle"], setup["cal"], setup["out"] / "lstm")
