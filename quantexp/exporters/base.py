"""Exporter protocol and registry (same pattern as the method registry)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from quantexp.runtimes.base import Runtime

from quantexp.config import ConfigError

if TYPE_CHECKING:
    from quantexp.config import ExporterConfig
    from quantexp.hardware import HostInfo
    from quantexp.models.base import ModelBundle, Split

_REGISTRY: dict[str, type["Exporter"]] = {}


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


class ExportError(ConfigError):
    """A model the exporter cannot convert (an unsupported op): one line that names
    the exporter and the op; the full trace stays in the MLflow run (traceback.txt)."""


class Exporter(ABC):
    def __init__(self, cfg: "ExporterConfig", host: "HostInfo"):
        self.cfg = cfg
        self.host = host

    @abstractmethod
    def export(self, model: nn.Module, bundle: "ModelBundle", out_dir: Path, tag: str,
               calibration: "Split | None" = None) -> Exported:
        """Write the artifact for ``model`` under ``out_dir`` (file stem ``tag``), load it
        back and return the runtime that executes the loaded artifact. ``calibration``
        is the method's calibration set when it drew one (formats that quantize
        themselves, e.g. full-integer TFLite, need it); others ignore it."""

    def load(self, path: Path) -> Exported:
        """Load an artifact of this format written by someone else (an artifact-stage
        method, e.g. ONNX Runtime quantization); formats that allow it override this."""
        raise TypeError(f"exporter {type(self).__name__} cannot load external artifacts")


def register(name: str):
    def decorator(cls: type[Exporter]) -> type[Exporter]:
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_exporter(name: str) -> type[Exporter]:
    if name not in _REGISTRY:
        importlib.import_module(f"quantexp.exporters.{name}")
    return _REGISTRY[name]
