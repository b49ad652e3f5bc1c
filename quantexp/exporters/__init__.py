"""Exporters turn a (quantized) PyTorch model into the artifact a user deploys,
save it, load it back and return the runtime that executes it."""

from quantexp.exporters.base import Exported, Exporter, get_exporter

__all__ = ["Exported", "Exporter", "get_exporter"]
