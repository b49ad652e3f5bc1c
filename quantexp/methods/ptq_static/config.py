"""Schema of method=ptq_static: PyTorch static int8 (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from quantexp.config import ConfigError, MethodConfig

if TYPE_CHECKING:
    from quantexp.config import ExperimentConfig

OUTLIER_MODES = ("fp32", "dynamic", "static")
EMBEDDING_MODES = ("auto", "int8", "fp32")


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
    # Layers that read the output of these activations get special treatment: a GELU's
    # output has a few channels far larger than the rest, which one static per-tensor
    # int8 scale cannot hold (MiniLM's FFN down-projections: -2.95 points in static
    # int8). Matched against the activation module's class name, case-insensitively
    # ("gelu" matches nn.GELU and HF's GELUActivation). README: "Static int8 on a transformer".
    outlier_after: list[str] = field(default_factory=lambda: ["gelu"])
    # How those layers run: fp32; dynamic (int8 weights, the activation scale computed per
    # batch at run time; exporter=none only; MiniLM: -1.70 points, as fbgemm's dynamic
    # kernels use 7-bit activations on AVX2); or static like the rest.
    outlier_layers: str = "fp32"
    # Embedding tables: int8 weight-only (a float scale and offset per row), or fp32.
    # auto: int8 with exporter=none, fp32 for other exporters.
    embeddings: str = "auto"

    def validate(self) -> None:
        super().validate()
        if any(not name.strip() for name in self.outlier_after):
            raise ConfigError("method.outlier_after names activation classes (e.g. [gelu]); got an empty name")
        for key, allowed in (("outlier_layers", OUTLIER_MODES), ("embeddings", EMBEDDING_MODES)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key}={getattr(self, key)!r}; valid: {', '.join(allowed)}")

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        """Resolves auto from the exporter; refuses torch.ao-only layers for other exporters."""
        torch_artifact = exp.exporter.name == "none"
        resolved: dict[str, Any] = {}
        for key, native, portable in (("outlier_layers", "dynamic", "fp32"), ("embeddings", "int8", "fp32")):
            # (outlier_layers is never auto: fp32 is its default on every exporter)
            value = getattr(self, key)
            if value == "auto":
                resolved[key] = native if torch_artifact else portable
            elif value == native and not torch_artifact:
                raise ConfigError(f"method.{key}={value} needs exporter=none (torch.ao's {value} layers do not "
                                  f"export to {exp.exporter.name}); use method.{key}={portable} or auto")
        return resolved
