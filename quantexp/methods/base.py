"""The protocol every quantization method follows, and the registry that finds them.

A method is a package ``quantexp/methods/<pkg>/``: a torch-free ``config.py`` whose
schema (a ``MethodConfig`` subclass) names its implementation class, a module with
that ``QuantizationMethod`` subclass, and ``conf/method/<name>.yaml``. The pipeline
only calls ``get_method(name)``: adding a method never touches it.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

if TYPE_CHECKING:
    from quantexp.config import MethodConfig, PrecisionConfig
    from quantexp.hardware import HostInfo
    from quantexp.models.base import ModelBundle, Split
    from quantexp.runtimes.base import Exported


@dataclass
class QuantizedModel:
    """A method's output: the model to deploy and facts about how it was made."""

    model: nn.Module
    # Flat facts worth logging (layers replaced, quantization path, ...).
    info: dict[str, Any] = field(default_factory=dict)


class QuantizationMethod(ABC):
    needs_calibration: ClassVar[bool] = False
    # calibrates against labels on held-out items (method.holdout of them)
    needs_labels: ClassVar[bool] = False
    #: "model": ``quantize`` returns a PyTorch module that the exporter then saves.
    #: "artifact": ``quantize_artifact`` rewrites the exported fp32 artifact (ONNX
    #: Runtime quantization works on the .onnx file, not on the PyTorch model).
    stage: ClassVar[str] = "model"

    def __init__(self, cfg: "MethodConfig", precision: "PrecisionConfig", host: "HostInfo"):
        self.cfg = cfg
        self.precision = precision
        self.host = host

    def check_model(self, bundle: "ModelBundle") -> None:
        """Refuse, with a one-line ``ConfigError``, a loaded model this method cannot
        quantize (the pipeline calls it right after the model loads, before any
        calibration, export or quantization work). The default accepts every model."""

    def quantize(self, bundle: "ModelBundle", calibration: "Split | None") -> QuantizedModel:
        """Return a quantized copy of ``bundle.model``; never modify the original."""
        raise TypeError(f"{type(self).__name__} is an artifact-stage method")

    def quantize_artifact(self, fp32: "Exported", bundle: "ModelBundle",
                          calibration: "Split | None", out_dir: Path) -> tuple[Path, dict[str, Any]]:
        """Write a quantized artifact derived from the exported fp32 one; return its
        path and facts worth logging."""
        raise TypeError(f"{type(self).__name__} is a model-stage method")


def get_method(name: str) -> type[QuantizationMethod]:
    """The class the method schema registered as ``name`` names, imported now, so that
    heavy back-ends (bitsandbytes, onnxruntime) load only when chosen."""
    from quantexp.config import implementation_of, schemas

    known = schemas("method")
    if name not in known:
        raise KeyError(f"no quantization method registered as {name!r}; known: {', '.join(known)}")
    return implementation_of(known[name])


def count_modules(model: nn.Module, types: tuple[type, ...]) -> int:
    return sum(isinstance(m, types) for m in model.modules())
