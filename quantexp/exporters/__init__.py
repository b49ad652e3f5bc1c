"""Exporters turn a (quantized) PyTorch model into the artifact a user deploys,
save it, load it back and return the runtime that executes it. One package per
format (``quantexp/exporters/<name>/``: ``config.py``, ``exporter.py``, ...)."""

from quantexp._lazy import lazy_exports

__all__ = ["Exported", "Exporter", "get_exporter"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "quantexp.exporters.base"))
