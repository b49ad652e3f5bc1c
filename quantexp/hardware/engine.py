"""Kernel choices decided from the CPU's ISA, each with the reason recorded:

- PyTorch's quantized engine (``hardware.engine=auto|x86|fbgemm|onednn``);
- ONNX Runtime's intra-/inter-op threads and execution mode;
- whether bf16 compute is real on this CPU (``precision=bf16``).

Pure functions of ``CpuInfo`` and the engines this torch build offers, so the tests can
ask them about CPUs this host is not (AVX-512 + VNNI, AMX, ARM).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantexp.hardware.cpu import CpuInfo

# Instructions that execute bf16 arithmetic natively (dot products / tile matmuls); without
# them PyTorch runs bf16 by converting to fp32 and back, slower than fp32 itself.
BF16_ISA = ("avx512_bf16", "amx_bf16")
FP16_ISA = ("avx512_fp16", "amx_fp16")


def _isa_text(cpu: CpuInfo) -> str:
    return ", ".join(cpu.isa) or "no SIMD extension detected"


def choose_engine(requested: str, supported: list[str], cpu: CpuInfo) -> tuple[str, str]:
    """(engine, reason). ``auto``: qnnpack on ARM; on x86 "x86", PyTorch's recommended
    backend, which sends each op to fbgemm or oneDNN - oneDNN where VNNI/AMX int8
    instructions exist, fbgemm's AVX2/AVX-512 kernels elsewhere."""
    usable = [e for e in supported if e != "none"]
    if requested != "auto":
        if requested not in usable:
            raise ValueError(f"hardware.engine={requested} is not in this torch build's engines: {', '.join(usable)}")
        return requested, f"hardware.engine={requested} (asked; ISA: {_isa_text(cpu)})"
    if cpu.arch in ("arm64", "aarch64") and "qnnpack" in usable:
        return "qnnpack", "auto: ARM CPU, qnnpack is PyTorch's ARM int8 backend"
    if "x86" in usable:
        if cpu.has_amx:
            why = "AMX int8 tiles: x86 routes int8 GEMMs to oneDNN's AMX kernels"
        elif cpu.has_vnni:
            why = "VNNI (int8 dot products in one instruction): x86 routes them to oneDNN/fbgemm VNNI kernels"
        elif cpu.has_avx512:
            why = "AVX-512 without VNNI: x86 uses fbgemm's AVX-512 u8s8 kernels"
        elif "avx2" in cpu.isa:
            why = "AVX2 only (no VNNI, no AVX-512): x86 uses fbgemm's AVX2 u8s8 kernels (vpmaddubsw)"
        else:
            why = "no AVX2: x86 falls back to reference kernels"
        return "x86", f"auto: x86 - {why}"
    for engine in ("fbgemm", "onednn"):
        if engine in usable:
            return engine, f"auto: {engine} (no x86 backend in this build)"
    return (usable[0], f"auto: {usable[0]}, the only engine") if usable else ("none", "no quantized engine")


@dataclass(frozen=True)
class OrtSettings:
    intra_op: int
    inter_op: int
    execution_mode: str  # sequential | parallel
    reason: str


def ort_settings(threads: int, mode: str, inter_op: int | None, cpu: CpuInfo) -> OrtSettings:
    """ORT session threads. auto -> sequential with 1 inter-op thread: the graphs here are
    chains (nothing to run side by side) and a second pool would take cores from the
    intra-op one; intra-op = the run's threads, the same budget torch gets."""
    if mode == "parallel":
        inter = inter_op or max(1, cpu.usable_cores // max(threads, 1))
        return OrtSettings(threads, inter, "parallel",
                           f"hardware.ort_execution_mode=parallel: {inter} inter-op x {threads} intra-op thread(s)")
    why = "auto: sequential" if mode == "auto" else "hardware.ort_execution_mode=sequential"
    return OrtSettings(threads, inter_op or 1, "sequential",
                       f"{why}, {threads} intra-op thread(s) on {cpu.usable_cores} usable core(s), 1 inter-op: "
                       "the graphs are chains; a second pool would oversubscribe the cores")


def bf16_unsupported_reason(cpu: CpuInfo) -> str | None:
    """Why bf16 compute would not be real on this CPU, or None when it is."""
    if any(flag in cpu.isa for flag in BF16_ISA) or cpu.arch in ("arm64", "aarch64") and "bf16" in cpu.isa:
        return None
    return (f"precision=bf16 on the CPU needs bf16 instructions ({' or '.join(BF16_ISA)}); this CPU has "
            f"{_isa_text(cpu)}, where PyTorch emulates bf16 through fp32 (slower than fp32, nothing to measure)")


def fp16_unsupported_reason(cpu: CpuInfo) -> str | None:
    """Why fp16 compute (method=cast) would not be real on this CPU, or None."""
    if any(flag in cpu.isa for flag in FP16_ISA) or cpu.arch in ("arm64", "aarch64"):
        return None
    return (f"method=cast precision=fp16 on the CPU needs fp16 arithmetic ({' or '.join(FP16_ISA)}); this CPU "
            f"has {_isa_text(cpu)}, where PyTorch emulates fp16 through fp32")


__all__ = ["BF16_ISA", "FP16_ISA", "fp16_unsupported_reason", "OrtSettings", "bf16_unsupported_reason", "choose_engine", "ort_settings"]
