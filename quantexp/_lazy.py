"""Lazy re-exports for package ``__init__`` files (PEP 562).

``quantexp.methods``, ``quantexp.exporters`` and ``quantexp.models`` keep their
short import paths (``from quantexp.models import load_model``) without importing
torch when only a schema module below them is needed (``run.py --help`` walks
their ``config`` modules)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` (a module) on first use."""

    def __getattr__(attr: str) -> Any:
        if attr not in names:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(names[attr]), attr)

    return __getattr__
