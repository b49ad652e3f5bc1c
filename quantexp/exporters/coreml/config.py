"""Schema of exporter=coreml and the Core ML facts its rules need (torch-free)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from quantexp.config import ConfigError, ExporterConfig, require_positive

if TYPE_CHECKING:
    from quantexp.config import ExperimentConfig


class ComputePrecision(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class WeightCompression(str, Enum):
    """coremltools.optimize.coreml weight compression of a float model (method=fp32)."""

    none = "none"
    int8 = "int8"              # linear_quantize_weights, int8 per output channel, symmetric
    palettize4 = "palettize4"  # palettize_weights, 4-bit k-means look-up table per tensor
    int4_block = "int4_block"  # linear_quantize_weights, int4 per block (iOS18 / macOS15)


class ComputeUnits(str, Enum):
    all = "all"
    cpu_only = "cpu_only"
    cpu_and_gpu = "cpu_and_gpu"
    cpu_and_ne = "cpu_and_ne"


class DeploymentTarget(str, Enum):
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"
    macOS13 = "macOS13"
    macOS14 = "macOS14"
    macOS15 = "macOS15"


class ConvertFrom(str, Enum):
    torch_export = "torch_export"  # falls back to jit_trace where torch.export fails
    jit_trace = "jit_trace"


# Core ML compute units a hardware target implies when exporter.compute_units is null.
COREML_HARDWARE_UNITS: dict[str, str] = {"cpu": "cpu_only", "mps": "cpu_and_gpu",
                                         "ane": "cpu_and_ne"}
# Targets whose ML Program opset has block-wise int4 (constexpr_blockwise_shift_scale).
COREML_BLOCKWISE_TARGETS = frozenset({DeploymentTarget.iOS18, DeploymentTarget.macOS15})


@dataclass
class CoreMLExporterConfig(ExporterConfig):
    """coremltools ML Program (.mlpackage); prediction needs macOS (see exporters/coreml.py)."""

    name: str = "coreml"
    implementation: ClassVar[str] = "quantexp.exporters.coreml.exporter:CoreMLExporter"
    # cpu: Core ML with CPU_ONLY compute units
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "mps", "ane"})
    compute_precision: ComputePrecision = ComputePrecision.fp16
    # Applies to float models (method=fp32); quantizing methods bring their own int8 weights.
    weight_compression: WeightCompression = WeightCompression.none
    # Weights with fewer elements stay uncompressed (coremltools' default, 2048).
    weight_threshold: int = 2048
    block_size: int = 32  # int4_block only
    # Load-time option (not stored in the package); null: from hardware (cpu -> cpu_only,
    # mps -> cpu_and_gpu, ane -> cpu_and_ne).
    compute_units: Optional[ComputeUnits] = None
    deployment_target: DeploymentTarget = DeploymentTarget.iOS17
    convert_from: ConvertFrom = ConvertFrom.torch_export
    # Static input batch of the package (the ANE wants static shapes). flexible_batch:
    # a RangeDim batch 1..max_batch instead (dynamic shapes keep a model off the ANE).
    batch_size: int = 1
    flexible_batch: bool = False
    max_batch: int = 1024

    def validate(self) -> None:
        require_positive(self, "batch_size", "block_size", "max_batch", prefix="exporter")
        if self.weight_threshold < 0:
            raise ConfigError(f"exporter.weight_threshold must be >= 0, got {self.weight_threshold}")
        if (self.weight_compression == WeightCompression.int4_block
                and self.deployment_target not in COREML_BLOCKWISE_TARGETS):
            raise ConfigError(
                f"exporter.weight_compression=int4_block needs block-wise int4 ops, which "
                f"deployment_target={self.deployment_target.value} lacks; valid deployment_target "
                f"values for int4_block: {', '.join(sorted(t.value for t in COREML_BLOCKWISE_TARGETS))}")

    def unmeasurable_reason(self) -> str | None:
        return None if sys.platform == "darwin" else "Core ML prediction needs macOS"

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        if self.weight_compression != WeightCompression.none and exp.method.name != "fp32":
            raise ConfigError(
                f"exporter.weight_compression={self.weight_compression.value} compresses a float "
                f"model; method={exp.method.name} brings its own quantized weights (exported as "
                "they are); valid: exporter.weight_compression=none, or method=fp32")
        if exp.hardware.name == "ane":
            if self.compute_precision != ComputePrecision.fp16:
                raise ConfigError("hardware=ane cannot run exporter.compute_precision=fp32 (the "
                                  "Neural Engine computes in fp16); valid compute_precision for "
                                  "ane: fp16")
            if self.compute_units in (ComputeUnits.cpu_only, ComputeUnits.cpu_and_gpu):
                raise ConfigError(f"hardware=ane cannot run exporter.compute_units="
                                  f"{self.compute_units.value}; valid compute_units for ane: "
                                  "cpu_and_ne, all (or null)")
        return {}
