"""Schema of method=ptq_static: PyTorch static int8 (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantexp.config import MethodConfig


@dataclass
class PTQStaticConfig(MethodConfig):
    name: str = "ptq_static"
    implementation: ClassVar[str] = "quantexp.methods.ptq_static.method:PTQStatic"
    # w4a8: 4-bit weight values (observed on [-8, 7]) in int8 kernels, int8 activations;
    # w4a8_tensor: the same with per-tensor weight scales.
    precisions: ClassVar[frozenset[str]] = frozenset({"int8", "w4a8", "w4a8_tensor"})
    # PyTorch's eager/FX int8 kernels (fbgemm / oneDNN) are CPU kernels; ane: the int8
    # model lowered to a Core ML W8A8 package (exporter=coreml, see exporters/coreml.py).
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "ane"})
    # tflite: full-integer int8 by the TFLite toolchain (see TFLiteExporterConfig).
    # onnx: torch.onnx exports the int8 model as a QDQ graph (int8 weights, calibrated
    # activation scales) that ONNX Runtime runs (see exporters/onnx.py).
    exporters: ClassVar[frozenset[str]] = MethodConfig.exporters | {"tflite", "coreml", "onnx"}
