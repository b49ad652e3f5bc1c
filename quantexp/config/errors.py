"""``ConfigError`` (the one exception a user's configuration raises) and the small
checks every schema's ``validate`` uses."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration the user must fix; printed as one line, exit code 2."""


def require_positive(obj: Any, *names: str, prefix: str = "model") -> None:
    """Refuse any of ``obj.<name>`` below 1, naming it as ``<prefix>.<name>``."""
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise ConfigError(f"{prefix}.{name} must be >= 1, got {value}")
