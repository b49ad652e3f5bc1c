"""Schema of method=fp32: the unquantized baseline (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantexp.config import MethodConfig


@dataclass
class Fp32Config(MethodConfig):
    name: str = "fp32"
    implementation: ClassVar[str] = "quantexp.methods.fp32.method:Fp32"
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32"})
    exporters: ClassVar[frozenset[str]] = MethodConfig.exporters | {"tflite", "coreml", "onnx"}
