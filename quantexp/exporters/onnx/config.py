"""Schema of exporter=onnx (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantexp.config import ConfigError, ExporterConfig, GraphOptimization


@dataclass
class OnnxExporterConfig(ExporterConfig):
    """torch.onnx.export (TorchScript-based) + an ONNX Runtime session (exporters/onnx.py)."""

    name: str = "onnx"
    implementation: ClassVar[str] = "quantexp.exporters.onnx.exporter:OnnxExporter"
    # cuda: ORT's CUDAExecutionProvider (onnxruntime-gpu), checked when the exporter starts
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    # 13+: per-channel QuantizeLinear/DequantizeLinear (axis); 20: the TorchScript exporter's max.
    opset: int = 17
    # Level of the ORT session that evaluates and times every ONNX artifact of the run.
    graph_optimization: GraphOptimization = GraphOptimization.all
    # Held-out test items compared with the in-memory PyTorch model (parity.*); 0: skip.
    parity_items: int = 64
    # A float model's ONNX export whose max |logit error| exceeds this x max(1, max |logit|)
    # is refused as a broken conversion (int8 models are compared, not gated).
    fp32_tolerance: float = 1e-3

    def validate(self) -> None:
        if not 13 <= self.opset <= 20:
            raise ConfigError(f"exporter.opset must be in [13, 20] (13: per-channel QDQ, 20: the "
                              f"TorchScript exporter's newest), got {self.opset}")
        if self.parity_items < 0:
            raise ConfigError(f"exporter.parity_items must be >= 0, got {self.parity_items}")
        if not self.fp32_tolerance > 0:
            raise ConfigError(f"exporter.fp32_tolerance must be > 0, got {self.fp32_tolerance}")
