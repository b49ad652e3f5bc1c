"""CPU facts from /proc/cpuinfo: model name and the ISA extensions that decide
which int8 kernels can be fast (VNNI does int8 dot products in one instruction;
AMX adds int8/bf16 tile matrix units)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

# /proc/cpuinfo flag -> the name we report. Order is the order printed.
ISA_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
    "amx_fp16": "amx_fp16",
    "asimd": "neon",  # aarch64
    "asimddp": "neon_dotprod",
    "asimdhp": "neon_fp16",  # aarch64 half-precision arithmetic
    "bf16": "neon_bf16",  # aarch64 BFloat16 instructions
}


@dataclass
class CpuInfo:
    model: str
    arch: str
    logical_cores: int
    usable_cores: int
    isa: list[str] = field(default_factory=list)

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.isa or "avx_vnni" in self.isa

    @property
    def has_amx(self) -> bool:
        return "amx_int8" in self.isa

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.isa


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(model name, recognised ISA flags) from the text of /proc/cpuinfo."""
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [name for flag, name in ISA_FLAGS.items() if flag in flags]


def read_cpu_info() -> CpuInfo:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model, isa = parse_cpuinfo(fh.read())
    except OSError:  # macOS / Windows: no /proc
        model, isa = platform.processor() or "unknown", []
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuInfo(model=model, arch=platform.machine(), logical_cores=os.cpu_count() or 1,
                   usable_cores=usable or 1, isa=isa)
