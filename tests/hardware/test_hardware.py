"""Hardware probes against fixed /proc/cpuinfo texts, and the not-available paths."""

import re
import sys

import pytest

from quantexp.config import HardwareConfig
from quantexp.hardware.cpu import CpuInfo, parse_cpuinfo
from quantexp.hardware.probe import HardwareUnavailable, probe_host, require_available, select_quantized_engine

SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16
"""
SKYLAKE = """model name\t: Intel(R) Core(TM) i7-6700 CPU
flags\t\t: fpu sse sse2 avx avx2 fma
"""
GRAVITON = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp
"""


def test_parse_amx_host():
    model, isa = parse_cpuinfo(SAPPHIRE_RAPIDS)
    cpu = CpuInfo(model, "x86_64", 2, 2, isa)
    assert model.startswith("Intel(R) Xeon(R) Platinum 8480+")
    assert cpu.has_vnni and cpu.has_amx and cpu.has_avx512
    assert "avx512_bf16" in isa and "avx512_fp16" in isa


def test_parse_avx2_only_host():
    _, isa = parse_cpuinfo(SKYLAKE)
    cpu = CpuInfo("i7", "x86_64", 8, 8, isa)
    assert isa == ["avx2", "fma"]
    assert not cpu.has_vnni and not cpu.has_amx and not cpu.has_avx512


def test_parse_arm_host():
    _, isa = parse_cpuinfo(GRAVITON)
    # asimdhp: Neoverse N1 has half-precision arithmetic (the mixed method may offer fp16 there)
    assert isa == ["neon", "neon_dotprod", "neon_fp16"]


def test_engine_selection():
    x86 = CpuInfo("x", "x86_64", 2, 2, ["avx2"])
    arm = CpuInfo("a", "aarch64", 2, 2, ["neon"])
    assert select_quantized_engine(["qnnpack", "x86", "fbgemm"], x86) == "x86"
    assert select_quantized_engine(["fbgemm", "qnnpack"], x86) == "fbgemm"
    assert select_quantized_engine(["qnnpack", "x86"], arm) == "qnnpack"


def test_probe_fixes_threads():
    import torch

    host = probe_host(HardwareConfig(name="cpu", threads=1))
    assert host.threads == 1 and torch.get_num_threads() == 1
    assert host.quantized_engine in torch.backends.quantized.supported_engines
    assert host.tags()["host.threads"] == "1"


def test_cpu_is_always_available():
    require_available(HardwareConfig(name="cpu"))


@pytest.mark.skipif(sys.platform == "darwin", reason="checks what a Linux user gets")
def test_mps_refused_on_linux():
    reason = ("hardware=mps is not available on this host: MPS (Apple GPU) needs macOS on "
              f"Apple silicon; this host runs {sys.platform}")
    with pytest.raises(HardwareUnavailable, match=re.escape(reason)):
        require_available(HardwareConfig(name="mps", device="mps"))


def test_ane_is_a_deployment_target_everywhere():
    # exporter=coreml converts and validates on any OS; prediction is reported as not
    # measured off macOS (tests/unit/test_coreml_exporter.py).
    require_available(HardwareConfig(name="ane"))
    assert probe_host(HardwareConfig(name="ane")).target == "ane"


def test_cuda_refused_without_gpu():
    import torch

    if torch.cuda.is_available():
        require_available(HardwareConfig(name="cuda"))
    else:
        with pytest.raises(HardwareUnavailable, match="hardware=cuda is not available on this host"):
            require_available(HardwareConfig(name="cuda"))
