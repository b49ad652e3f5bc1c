"""Schemas of method=cast (fp16/bf16 model) and method=woq_int8 (int8 weight-only
Linear layers); torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from quantexp.config import ConfigError, MethodConfig

if TYPE_CHECKING:
    from quantexp.config import ExperimentConfig


@dataclass
class CastConfig(MethodConfig):
    """Every floating weight and activation in ``precision`` (fp16 | bf16), logits back in
    fp32. On the CPU only where the ISA has the instructions (checked by the pre-flight:
    avx512_bf16/amx_bf16 for bf16, avx512_fp16/amx_fp16 for fp16); on hardware=mps the
    Apple GPU runs it (hardware.dtype must match)."""

    name: str = "cast"
    implementation: ClassVar[str] = "quantexp.methods.lowp.method:Cast"
    precisions: ClassVar[frozenset[str]] = frozenset({"fp16", "bf16"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "mps", "cuda"})

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        _same_dtype_on_mps(self.name, exp)
        return {}


@dataclass
class WeightOnlyInt8Config(MethodConfig):
    """nn.Linear weights stored int8 per output channel (symmetric, one fp scale per row),
    multiplied by ``torch._weight_int8pack_mm`` (CPU and MPS kernels in torch 2.13);
    activations stay in the compute dtype (fp32 on the CPU, hardware.dtype on mps)."""

    name: str = "woq_int8"
    implementation: ClassVar[str] = "quantexp.methods.lowp.method:WeightOnlyInt8"
    precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "mps"})


def _same_dtype_on_mps(method: str, exp: "ExperimentConfig") -> None:
    dtype = exp.hardware.dtype
    dtype = getattr(dtype, "value", dtype)
    if exp.hardware.device == "mps" and dtype != exp.precision.name:
        raise ConfigError(f"method={method} precision={exp.precision.name} on hardware=mps needs "
                          f"hardware.dtype={exp.precision.name} (got {dtype})")
