"""The runtime protocol, ``Exported`` (a saved artifact and the runtime that runs it),
and the batched prediction loop shared by every runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.progress import track


class Runtime(ABC):
    """Runs a deployed model: ``runtime(*inputs) -> logits`` (torch tensors in and out)."""

    #: short name for reports: "torch", "onnxruntime", "litert", "coreml"
    kind: str = "abstract"

    def __init__(self, artifact: Path | None = None):
        self.artifact = artifact

    @abstractmethod
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor: ...

    def call_timer(self):
        """How the latency harness times one call (a ``bench.latency.CallTimer``), or
        None (this default) for host wall-clock time. Runtimes on an asynchronous device
        override it."""

    def describe(self) -> dict[str, str]:
        return {"runtime": self.kind, "artifact": str(self.artifact) if self.artifact else ""}


@dataclass
class Exported:
    """A saved artifact and what runs it. ``runtime`` is None when this host cannot
    execute the format (Core ML on Linux); ``not_measured`` then says why."""

    runtime: Runtime | None
    artifact: Path
    export_time_s: float
    load_time_s: float
    info: dict[str, Any] = field(default_factory=dict)
    # Bits of the stored parameters (weights, biases, their quantization scales)
    # read from the artifact itself; None: count them from the PyTorch state_dict.
    param_bits: float | None = None
    not_measured: str | None = None
    # Files written beside the artifact worth keeping (e.g. the Core ML exporter's ANE
    # compatibility report): {name: path}; the pipeline logs them as MLflow artifacts.
    reports: dict[str, Path] = field(default_factory=dict)


def predict(runtime: Runtime, inputs: tuple[torch.Tensor, ...], batch_size: int,
            desc: str = "evaluate") -> np.ndarray:
    """Arg-max predictions of ``runtime`` over every item, in batches."""
    n = int(inputs[0].shape[0])
    out = []
    for start in track(range(0, n, batch_size), desc):
        logits = runtime(*(x[start:start + batch_size] for x in inputs))
        out.append(torch.as_tensor(logits).argmax(dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)
