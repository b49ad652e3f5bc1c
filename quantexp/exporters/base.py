"""The exporter protocol and ``get_exporter``: the class an exporter schema names
(``quantexp/exporters/<name>/config.py``). ``Exported`` lives in ``quantexp.runtimes``
(re-exported here) because artifact-stage methods read it too."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from quantexp.config import ConfigError
from quantexp.runtimes.base import Exported

if TYPE_CHECKING:
    from quantexp.config import ExporterConfig
    from quantexp.hardware import HostInfo
    from quantexp.models.base import ModelBundle, Split


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


def get_exporter(name: str) -> type[Exporter]:
    """The exporter class the schema registered as ``name`` names (imported now)."""
    from quantexp.config import implementation_of, schemas

    known = schemas("exporter")
    if name not in known:
        raise KeyError(f"no exporter registered as {name!r}; known: {', '.join(known)}")
    return implementation_of(known[name])


__all__ = ["Exported", "ExportError", "Exporter", "get_exporter"]
