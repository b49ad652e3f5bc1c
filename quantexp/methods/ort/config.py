"""Schemas of the ONNX Runtime methods (ort_dynamic, ort_static) and the op types
ONNX Runtime's quantizers handle, torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Optional

from omegaconf import MISSING

from quantexp.config import ConfigError, GraphOptimization, MethodConfig


class OrtQuantFormat(str, Enum):
    qdq = "qdq"              # QuantizeLinear/DequantizeLinear pairs; ORT fuses them into int8 kernels
    qoperator = "qoperator"  # quantized operators (QLinearConv, QLinearMatMul, ...) in the file


class IntType(str, Enum):
    s8 = "s8"
    u8 = "u8"


class CalibrateMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"        # KL-divergence threshold search on histograms
    percentile = "percentile"  # clip at method.percentile of |x|


# Op types ONNX Runtime's quantizers handle (onnxruntime.quantization.registry, 1.32);
# tests/unit/test_ort_methods.py checks them against the installed onnxruntime.
ORT_QOPERATOR_OP_TYPES = frozenset({
    "Add", "ArgMax", "AveragePool", "Clip", "Concat", "Conv", "EmbedLayerNormalization", "Flatten",
    "Gather", "Gemm", "GlobalAveragePool", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "Relu",
    "Reshape", "Resize", "Sigmoid", "Softmax", "Split", "Squeeze", "Transpose", "Unsqueeze", "Where"})
ORT_QDQ_OP_TYPES = ORT_QOPERATOR_OP_TYPES | {
    "BatchNormalization", "ConvTranspose", "CumSum", "GatherElements", "InstanceNormalization",
    "LayerNormalization", "Slice", "TopK"}
ORT_DYNAMIC_OP_TYPES = frozenset({"Attention", "Conv", "EmbedLayerNormalization", "Gather", "LSTM",
                                  "MatMul", "Transpose"})


@dataclass
class OrtQuantConfig(MethodConfig):
    """Shared by ort_dynamic / ort_static: ONNX Runtime quantizes the exported fp32
    ONNX file (quantexp/methods/ort/quantize.py). Needs exporter=onnx."""

    name: str = MISSING
    # Per output channel weight scales: no measurable cost in ORT's CPU kernels here,
    # better fp32 agreement (MiniLM, 500 test items: dynamic 97% vs 87%, static 90% vs 86%).
    per_channel: bool = True
    weight_type: IntType = IntType.s8
    # Weights on 7 bits; null: true on x86 CPUs without VNNI (see quantize.default_reduce_range).
    reduce_range: Optional[bool] = None
    # ONNX op types to quantize; null: the model family's default (quantize.DEFAULT_OP_TYPES).
    op_types: Optional[list[str]] = None
    # ORT optimization of the fp32 graph before quantizing (quant pre-processing);
    # the session that runs the result uses exporter.graph_optimization.
    graph_optimization: GraphOptimization = GraphOptimization.basic
    # Items compared per quantized node output vs fp32 (tables/layer_error.csv); 0: skip.
    layer_error_items: int = 32
    precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    # The installed onnxruntime is the CPU build (no CUDAExecutionProvider).
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})
    exporters: ClassVar[frozenset[str]] = frozenset({"onnx"})
    valid_op_types: ClassVar[frozenset[str]] = ORT_DYNAMIC_OP_TYPES

    def validate(self) -> None:
        super().validate()
        if self.layer_error_items < 0:
            raise ConfigError(f"method.layer_error_items must be >= 0, got {self.layer_error_items}")
        if self.graph_optimization == GraphOptimization.all:
            raise ConfigError(
                "method.graph_optimization=all writes hardware-specific layout ops (NCHWc) that the "
                "quantizer cannot read; valid method.graph_optimization values: disabled, basic, "
                "extended (the deployed session's level is exporter.graph_optimization)")
        if self.op_types is not None:
            unknown = sorted(set(self.op_types) - self.valid_op_types)
            if unknown or not self.op_types:
                raise ConfigError(
                    f"method.op_types: {', '.join(unknown) or '(empty list)'} cannot be quantized by "
                    f"method={self.name}; valid op types: {', '.join(sorted(self.valid_op_types))}")


@dataclass
class OrtDynamicConfig(OrtQuantConfig):
    """onnxruntime.quantization.quantize_dynamic: int8 weights, activations quantized
    to uint8 per batch at run time (DynamicQuantizeLinear + MatMulInteger/ConvInteger)."""

    name: str = "ort_dynamic"
    implementation: ClassVar[str] = "quantexp.methods.ort.dynamic:OrtDynamic"


@dataclass
class OrtStaticConfig(OrtQuantConfig):
    """onnxruntime.quantization.quantize_static: weights and activations int8, activation
    ranges calibrated on method.calibration (size, seed, batch_size)."""

    name: str = "ort_static"
    implementation: ClassVar[str] = "quantexp.methods.ort.static:OrtStatic"
    quant_format: OrtQuantFormat = OrtQuantFormat.qdq
    activation_type: IntType = IntType.u8
    # minmax: ORT's default and the cheapest. With MatMul outputs quantized (before
    # float_output_op_types), entropy was better on MiniLM (2,000 test items: -1.5 vs
    # -2.3 points, percentile -2.5); with them float, minmax matches entropy (500 items:
    # 94.4% vs 93.8% agreement) at a third of the calibration time.
    calibrate_method: CalibrateMethod = CalibrateMethod.minmax
    # Percentile of |x| kept by calibrate_method=percentile; null: ORT's 99.999.
    percentile: Optional[float] = None
    # Quantize only MatMuls whose second input is a weight (not activation x activation,
    # e.g. attention scores); ORT's dynamic quantizer always does this.
    matmul_const_b_only: bool = True
    # Op types whose outputs stay float (no QuantizeLinear after them: ORT runs them as
    # int8 x int8 -> float); null: the family's default (quantize.DEFAULT_FLOAT_OUTPUTS).
    float_output_op_types: Optional[list[str]] = None
    valid_op_types: ClassVar[frozenset[str]] = ORT_QDQ_OP_TYPES

    def validate(self) -> None:
        super().validate()
        if self.quant_format == OrtQuantFormat.qoperator and self.op_types is not None:
            unknown = sorted(set(self.op_types) - ORT_QOPERATOR_OP_TYPES)
            if unknown:
                raise ConfigError(
                    f"method.op_types: {', '.join(unknown)} have no quantized operator for "
                    f"method.quant_format=qoperator; use quant_format=qdq or op types from: "
                    f"{', '.join(sorted(ORT_QOPERATOR_OP_TYPES))}")
        unknown = sorted(set(self.float_output_op_types or ()) - ORT_QDQ_OP_TYPES)
        if unknown:
            raise ConfigError(f"method.float_output_op_types: {', '.join(unknown)} are not op types "
                              f"ORT quantizes; valid op types: {', '.join(sorted(ORT_QDQ_OP_TYPES))}")
        if self.activation_type == IntType.s8 and self.weight_type == IntType.u8:
            raise ConfigError("method.activation_type=s8 with method.weight_type=u8 is not supported "
                              "by ONNX Runtime quantization; valid activation/weight pairs: u8/s8, "
                              "u8/u8, s8/s8")
        if self.percentile is not None:
            if self.calibrate_method != CalibrateMethod.percentile:
                raise ConfigError(f"method.percentile only applies to calibrate_method=percentile, "
                                  f"not {self.calibrate_method.value}")
            if not 50.0 < self.percentile <= 100.0:
                raise ConfigError(f"method.percentile must be in (50, 100], got {self.percentile}")
