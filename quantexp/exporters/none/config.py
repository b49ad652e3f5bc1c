"""Schema of exporter=none: the PyTorch module itself (TorchScript) is deployed (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantexp.config import ExporterConfig


@dataclass
class NoneExporterConfig(ExporterConfig):
    name: str = "none"
    implementation: ClassVar[str] = "quantexp.exporters.none.exporter:TorchArtifact"
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda", "mps"})
