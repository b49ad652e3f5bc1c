"""Quantization methods: one package per method or method group
(``quantexp/methods/<pkg>/``: ``config.py`` with the schema(s), the implementation
beside it), found by name through ``get_method``."""

from quantexp._lazy import lazy_exports

__all__ = ["QuantizationMethod", "QuantizedModel", "get_method"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "quantexp.methods.base"))
