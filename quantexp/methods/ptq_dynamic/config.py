"""Schema of method=ptq_dynamic: PyTorch dynamic int8 / fp16 weights (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantexp.config import MethodConfig


@dataclass
class PTQDynamicConfig(MethodConfig):
    name: str = "ptq_dynamic"
    implementation: ClassVar[str] = "quantexp.methods.ptq_dynamic.method:PTQDynamic"
    # quantize_dynamic: int8 weights + activations quantized per batch at run
    # time, or fp16 weights.
    precisions: ClassVar[frozenset[str]] = frozenset({"int8", "fp16"})
    # ane: the int8 weights in a Core ML package (exporter=coreml; activations fp16).
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "ane"})
    # tflite: dynamic-range int8 by the TFLite toolchain (see TFLiteExporterConfig).
    # Not onnx: torch.onnx has no symbolic for quantized::linear_dynamic (use ort_dynamic).
    exporters: ClassVar[frozenset[str]] = MethodConfig.exporters | {"tflite", "coreml"}
