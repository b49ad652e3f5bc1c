"""Schemas of the bitsandbytes methods (bnb_int8, bnb_nf4), torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from quantexp.config import ConfigError, MethodConfig


class ComputeDType(str, Enum):
    """dtype the 4-bit weights are dequantized to for the matmul (activations)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# Blocksizes bitsandbytes 0.50 accepts for 4-bit quantization (functional.quantize_4bit).
BNB_4BIT_BLOCKSIZES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class BnbInt8Config(MethodConfig):
    """bitsandbytes LLM.int8(): every nn.Linear becomes Linear8bitLt (int8 row-wise
    weights; activation columns with |x| >= threshold stay in fp16)."""

    name: str = "bnb_int8"
    implementation: ClassVar[str] = "quantexp.methods.bnb.int8:BnbInt8"
    # Outlier threshold of the mixed-precision decomposition; 0 disables it.
    threshold: float = 6.0
    # Linear layers whose qualified name contains any of these substrings stay fp32.
    skip_modules: list[str] = field(default_factory=list)
    precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    def validate(self) -> None:
        super().validate()
        if not self.threshold >= 0.0:
            raise ConfigError(f"method.threshold must be >= 0 (0 disables outlier decomposition), "
                              f"got {self.threshold}")


@dataclass
class BnbNF4Config(MethodConfig):
    """bitsandbytes 4-bit (QLoRA): every nn.Linear becomes Linear4bit; the 4-bit code
    (nf4 or fp4) comes from the precision group."""

    name: str = "bnb_nf4"
    implementation: ClassVar[str] = "quantexp.methods.bnb.nf4:BnbNF4"
    blocksize: int = 64
    # Double quantization: the per-block fp32 absmax are themselves quantized to 8 bits.
    double_quant: bool = True
    compute_dtype: ComputeDType = ComputeDType.fp32
    skip_modules: list[str] = field(default_factory=list)
    precisions: ClassVar[frozenset[str]] = frozenset({"nf4", "fp4"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    def validate(self) -> None:
        super().validate()
        if self.blocksize not in BNB_4BIT_BLOCKSIZES:
            raise ConfigError(f"method.blocksize={self.blocksize} is not supported by bitsandbytes; "
                              f"valid blocksizes: {', '.join(map(str, BNB_4BIT_BLOCKSIZES))}")
