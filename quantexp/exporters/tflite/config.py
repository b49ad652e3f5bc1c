"""Schema of exporter=tflite and the one mapping from method to TFLite quantization (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from quantexp.config import ConfigError, ExporterConfig, Granularity, require_positive

if TYPE_CHECKING:
    from quantexp.config import ExperimentConfig


class TFLiteQuantization(str, Enum):
    """How exporter=tflite quantizes, with the TFLite toolchain (ai-edge-quantizer on
    the converted fp32 graph: torch.ao int8 modules do not convert)."""

    auto = "auto"                  # follow the method (TFLITE_METHOD_QUANTIZATION)
    none = "none"                  # fp32 graph
    dynamic_int8 = "dynamic_int8"  # int8 weights, activations quantized at run time
    full_int8 = "full_int8"        # int8 weights + activations (calibrated), int8 I/O


# The one mapping from method to TFLite quantization; auto resolves through it and an
# explicit exporter.quantization must agree with it (the row keeps the method's name).
TFLITE_METHOD_QUANTIZATION: dict[str, TFLiteQuantization] = {
    "fp32": TFLiteQuantization.none,
    "ptq_dynamic": TFLiteQuantization.dynamic_int8,
    "ptq_static": TFLiteQuantization.full_int8,
}


@dataclass
class TFLiteExporterConfig(ExporterConfig):
    """litert-torch conversion + LiteRT interpreter (``ai_edge_litert``)."""

    name: str = "tflite"
    implementation: ClassVar[str] = "quantexp.exporters.tflite.exporter:TFLiteExporter"
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})
    quantization: TFLiteQuantization = TFLiteQuantization.auto
    # Weight granularity of the int8 schemes; null: precision.granularity.
    granularity: Optional[Granularity] = None
    # The graph's static batch (conf: ${bench.batch_size}, so timing is one invoke).
    batch_size: int = 16
    # Held-out test items compared with the in-memory fp32 PyTorch model (parity.*).
    parity_items: int = 64
    # An fp32 artifact whose max |logit error| exceeds this x max(1, max |logit|) is
    # refused as a broken conversion.
    fp32_tolerance: float = 1e-3

    def validate(self) -> None:
        require_positive(self, "batch_size", "parity_items", prefix="exporter")
        if not self.fp32_tolerance > 0:
            raise ConfigError(f"exporter.fp32_tolerance must be > 0, got {self.fp32_tolerance}")

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        """Resolves quantization=auto from the method and granularity=null from the precision."""
        resolved: dict[str, Any] = {}
        method = exp.method.name
        expected = TFLITE_METHOD_QUANTIZATION.get(method)
        if expected is None:
            raise ConfigError(f"exporter=tflite has no TFLite quantization for method={method}; "
                              f"valid methods: {', '.join(sorted(TFLITE_METHOD_QUANTIZATION))}")
        if self.quantization == TFLiteQuantization.auto:
            resolved["quantization"] = expected
        elif self.quantization != expected:
            raise ConfigError(
                f"exporter.quantization={self.quantization.value} does not match method={method} "
                f"(deployed as {expected.value}); use exporter.quantization=auto or method="
                + "|".join(m for m, q in TFLITE_METHOD_QUANTIZATION.items() if q == self.quantization))
        if expected != TFLiteQuantization.none and exp.precision.name != "int8":
            raise ConfigError(f"exporter=tflite deploys method={method} as {expected.value}; "
                              f"precision={exp.precision.name} is not supported; valid precision: int8")
        if self.granularity is None:
            resolved["granularity"] = exp.precision.granularity
        return resolved
