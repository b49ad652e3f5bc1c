"""Engine, ORT and bf16 choices from the ISA, asked about CPUs this host is not."""

import pytest

from quantexp.config import HardwareConfig, QuantEngine
from quantexp.hardware.cpu import CpuInfo, parse_cpuinfo, read_cpu_info
from quantexp.hardware.engine import bf16_unsupported_reason, choose_engine, fp16_unsupported_reason, ort_settings
from quantexp.hardware.probe import probe_host
from tests.hardware.test_hardware import GRAVITON, SAPPHIRE_RAPIDS, SKYLAKE

ALL = ["qnnpack", "onednn", "x86", "fbgemm"]


def cpu_of(text: str, arch: str = "x86_64") -> CpuInfo:
    model, isa = parse_cpuinfo(text)
    return CpuInfo(model, arch, 2, 2, isa)


def test_auto_engine_and_reason_follow_the_isa():
    engine, why = choose_engine("auto", ALL, cpu_of(SKYLAKE))
    assert engine == "x86" and "AVX2 only" in why and "fbgemm" in why
    engine, why = choose_engine("auto", ALL, cpu_of(SAPPHIRE_RAPIDS))
    assert engine == "x86" and "AMX" in why
    assert choose_engine("auto", ALL, cpu_of(GRAVITON, "aarch64"))[0] == "qnnpack"
    assert choose_engine("auto", ["fbgemm", "none"], cpu_of(SKYLAKE))[0] == "fbgemm"


def test_asked_engine_is_kept_or_refused():
    assert choose_engine("onednn", ALL, cpu_of(SKYLAKE)) == ("onednn", "hardware.engine=onednn (asked; ISA: avx2, fma)")
    with pytest.raises(ValueError, match="not in this torch build"):
        choose_engine("fbgemm", ["qnnpack"], cpu_of(GRAVITON, "aarch64"))


def test_ort_settings():
    s = ort_settings(2, "auto", None, cpu_of(SKYLAKE))
    assert (s.intra_op, s.inter_op, s.execution_mode) == (2, 1, "sequential") and "chains" in s.reason
    p = ort_settings(1, "parallel", None, cpu_of(SKYLAKE))
    assert (p.inter_op, p.execution_mode) == (2, "parallel")


def test_bf16_and_fp16_need_their_instructions():
    assert bf16_unsupported_reason(cpu_of(SAPPHIRE_RAPIDS)) is None
    reason = bf16_unsupported_reason(cpu_of(SKYLAKE))
    assert reason.startswith("precision=bf16 on the CPU needs bf16 instructions") and "avx2, fma" in reason
    assert fp16_unsupported_reason(cpu_of(SAPPHIRE_RAPIDS)) is None
    assert "avx512_fp16" in fp16_unsupported_reason(cpu_of(SKYLAKE))


@pytest.mark.parametrize("engine", ["fbgemm", "onednn"])
def test_probe_sets_the_engine_and_records_why(engine):
    import torch

    before = torch.backends.quantized.engine
    try:
        host = probe_host(HardwareConfig(name="cpu", engine=QuantEngine(engine), threads=1))
        assert host.quantized_engine == engine == torch.backends.quantized.engine
        assert host.engine_reason.startswith(f"hardware.engine={engine}")
        assert host.tags()["host.ort_threads"] == "intra 1, inter 1, sequential"
        auto = probe_host(HardwareConfig(name="cpu", threads=1))
        assert auto.engine_reason.startswith("auto: ")
    finally:
        torch.backends.quantized.engine = before


def test_this_host_bf16_verdict_matches_its_isa():
    cpu = read_cpu_info()
    has = any(f in cpu.isa for f in ("avx512_bf16", "amx_bf16"))
    assert (bf16_unsupported_reason(cpu) is None) == has
