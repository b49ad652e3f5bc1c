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


# Bits of one stored value of each dtype.
DTYPE_BITS = {DType.fp32: 32, DType.fp16: 16, DType.bf16: 16, DType.int8: 8, DType.int4: 4,
              DType.nf4: 4, DType.fp4: 4}
# dtypes a layer of method=mixed (and the precision search) can run in.
MIXED_DTYPES = (DType.fp32, DType.fp16, DType.bf16, DType.int8, DType.int4)
