"""Enums shared by several config groups (model family, dtypes, observers, ONNX
Runtime graph levels) and the bit width of each dtype."""

from __future__ import annotations

from enum import Enum


class Family(str, Enum):
    cnn = "cnn"
    rnn = "rnn"
    transformer = "transformer"


class Observer(str, Enum):
    """Calibration observers PyTorch's x86 backend offers for activations."""

    minmax = "minmax"
    moving_average_minmax = "moving_average_minmax"
    histogram = "histogram"  # searches the clipping range that minimises L2 error


class Granularity(str, Enum):
    per_tensor = "per_tensor"
    per_channel = "per_channel"


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"
    int4 = "int4"
    nf4 = "nf4"
    fp4 = "fp4"


class GraphOptimization(str, Enum):
    """ONNX Runtime graph optimization levels (``SessionOptions.graph_optimization_level``)."""

    disabled = "disabled"
    basic = "basic"        # constant folding, redundant nodes: hardware independent
    extended = "extended"  # + fusions (GELU, LayerNorm, QDQ groups -> int8 kernels)
    all = "all"            # + layout transforms (NCHWc): hardware specific


class QuantEngine(str, Enum):
    """PyTorch's quantized CPU kernels (``torch.backends.quantized.engine``)."""

    auto = "auto"      # chosen from the CPU's ISA (quantexp.hardware.engine), the reason recorded
    x86 = "x86"        # torch >= 2.0: dispatches per op between fbgemm and oneDNN
    fbgemm = "fbgemm"  # Facebook's int8 GEMM (AVX2 / AVX-512 / VNNI)
    onednn = "onednn"  # Intel oneDNN (VNNI, AMX int8)


class OrtExecutionMode(str, Enum):
    """ONNX Runtime's ``SessionOptions.execution_mode``."""

    auto = "auto"              # sequential (the graphs here are chains), the reason recorded
    sequential = "sequential"  # one node at a time; intra-op threads inside each node
    parallel = "parallel"      # independent branches at once on the inter-op threads


# Bits of one stored value of each dtype.
DTYPE_BITS = {DType.fp32: 32, DType.fp16: 16, DType.bf16: 16, DType.int8: 8, DType.int4: 4,
              DType.nf4: 4, DType.fp4: 4}
# dtypes a layer of method=mixed (and the precision search) can run in.
MIXED_DTYPES = (DType.fp32, DType.fp16, DType.bf16, DType.int8, DType.int4)
