"""Probe the host for the chosen hardware target and refuse targets it lacks.

``require_available`` runs before any model loads, so ``hardware=cuda`` on a
machine without a GPU ends with one line, "not available on this host: ...".
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass

from quantexp.config import HardwareConfig
from quantexp.hardware.cpu import CpuInfo, read_cpu_info
from quantexp.hardware.engine import choose_engine, ort_settings


class HardwareUnavailable(RuntimeError):
    """The requested target does not exist on this host."""


def unavailable_reason(name: str) -> str | None:
    """Why target ``name`` cannot run here, or None when it can."""
    if name == "cpu":
        return None
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "CUDA needs an NVIDIA GPU and driver; torch.cuda.is_available() is False"
        return None
    if name == "mps":
        if sys.platform != "darwin":
            return f"MPS (Apple GPU) needs macOS on Apple silicon; this host runs {sys.platform}"
        import torch

        if not torch.backends.mps.is_available():
            return "MPS (Apple GPU) is not available: torch.backends.mps.is_available() is False"
        return None
    if name == "ane":
        # Always available as a deployment target: exporter=coreml converts, validates
        # and checks ANE compatibility on any OS; Core ML prediction (accuracy, latency)
        # needs macOS, and the exporter reports it as not measured elsewhere.
        return None
    return f"unknown hardware target {name!r}"


def require_available(hw: HardwareConfig) -> None:
    reason = unavailable_reason(hw.name)
    if reason:
        raise HardwareUnavailable(f"hardware={hw.name} is not available on this host: {reason}")


@dataclass
class HostInfo:
    """What the run executed on; recorded with every result."""

    target: str
    device: str
    threads: int
    quantized_engine: str
    onednn: bool
    cpu: CpuInfo
    os: str
    python: str
    # Compute dtype of the PyTorch runtime on the device (hardware.dtype), or None.
    dtype: str | None = None
    # The GPU a cuda run executed on ("NVIDIA H100 80GB HBM3, sm_90, CUDA 13.0"), or None.
    accelerator: str | None = None
    # Why that quantized engine (hardware.engine, from the ISA when auto).
    engine_reason: str = ""
    # ONNX Runtime sessions: inter-op threads, execution mode, and why.
    ort_inter_op: int = 1
    ort_execution_mode: str = "sequential"
    ort_reason: str = ""

    def tags(self) -> dict[str, str]:
        return {
            **({"host.accelerator": self.accelerator} if self.accelerator else {}),
            "host.cpu": self.cpu.model,
            "host.arch": self.cpu.arch,
            "host.isa": ",".join(self.cpu.isa) or "none detected",
            "host.vnni": str(self.cpu.has_vnni),
            "host.amx": str(self.cpu.has_amx),
            "host.threads": str(self.threads),
            "host.quantized_engine": self.quantized_engine,
            "host.quantized_engine_reason": self.engine_reason[:5000],
            "host.ort_threads": f"intra {self.threads}, inter {self.ort_inter_op}, {self.ort_execution_mode}",
            "host.onednn": str(self.onednn),
            "host.os": self.os,
            "host.python": self.python,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def select_quantized_engine(supported: list[str], cpu: CpuInfo) -> str:
    """PyTorch's int8 CPU backend chosen from the ISA (``hardware.engine=auto``)."""
    return choose_engine("auto", supported, cpu)[0]


def apply_torch_settings(threads: int, engine: str) -> None:
    """The process-wide torch settings a run fixes: its thread count and int8 engine.
    Also applied by each process a run times in (``bench.processes``)."""
    import torch

    torch.set_num_threads(threads)
    if engine != "none":
        torch.backends.quantized.engine = engine


def probe_host(hw: HardwareConfig) -> HostInfo:
    """Fix the thread count and quantized engine for this run and describe the host."""
    import torch

    cpu = read_cpu_info()
    threads = hw.threads or cpu.usable_cores
    engine, engine_reason = choose_engine(getattr(hw.engine, "value", hw.engine),
                                          list(torch.backends.quantized.supported_engines), cpu)
    apply_torch_settings(threads, engine)
    ort = ort_settings(threads, getattr(hw.ort_execution_mode, "value", hw.ort_execution_mode),
                       hw.ort_inter_op_threads, cpu)
    return HostInfo(
        target=hw.name,
        device=hw.device,
        threads=threads,
        quantized_engine=engine,
        onednn=bool(torch.backends.mkldnn.is_available()),
        cpu=cpu,
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        dtype=hw.dtype.value if hw.dtype is not None else None,
        accelerator=describe_cuda_device() if hw.device == "cuda" else None,
        engine_reason=engine_reason, ort_inter_op=ort.inter_op, ort_execution_mode=ort.execution_mode,
        ort_reason=ort.reason,
    )


def describe_cuda_device() -> str:
    """Name, compute capability and CUDA version of the current GPU."""
    import torch

    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)}, sm_{major}{minor}, CUDA {torch.version.cuda}"
