"""Benchmark measurements: latency (latency.py), memory (memory.py), model size (size.py).

Names are re-exported lazily so that importing the light latency/memory helpers does not
pull in torch (size.py needs it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LatencyStats": "latency",
    "measure_latency": "latency",
    "timeit_reference": "latency",
    "PeakRSSSampler": "memory",
    "CudaPeakMemory": "memory",
    "process_peak_rss_mb": "memory",
    "StorageReport": "size",
    "UnsupportedStateError": "size",
    "bits_per_parameter": "size",
    "path_size_bytes": "size",
    "storage_bits": "size",
}

__all__ = [
    "CudaPeakMemory",
    "LatencyStats",
    "PeakRSSSampler",
    "StorageReport",
    "UnsupportedStateError",
    "bits_per_parameter",
    "measure_latency",
    "path_size_bytes",
    "process_peak_rss_mb",
    "storage_bits",
    "timeit_reference",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
