"""Quantization methods: one module per method, found by name through the registry."""

from quantexp.methods.base import QuantizationMethod, QuantizedModel, get_method

__all__ = ["QuantizationMethod", "QuantizedModel", "get_method"]
