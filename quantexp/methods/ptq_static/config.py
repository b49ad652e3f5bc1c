"""Schema of method=ptq_static: PyTorch static int8 (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from quantexp.config import ConfigError, MethodConfig


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
    # Layers that read the output of these activations stay fp32: a GELU's output has a
    # few channels far larger than the rest, which one per-tensor int8 scale cannot hold
    # (MiniLM's FFN down-projections: -2.95 points with them in int8, -0.35 without;
    # README, "Static int8 on a transformer"). Matched against the activation module's
    # class name, case-insensitively ("gelu" matches nn.GELU and HF's GELUActivation).
    float_after: list[str] = field(default_factory=lambda: ["gelu"])

    def validate(self) -> None:
        super().validate()
        if any(not name.strip() for name in self.float_after):
            raise ConfigError("method.float_after names activation classes (e.g. [gelu]); got an empty name")
