"""``ConfigError`` (the one exception a user's configuration raises) and the small
checks every schema's ``validate`` uses."""

from __future__ import annotations

import math
import re
from typing import Any


class ConfigError(ValueError):
    """A configuration the user must fix; printed as one line, exit code 2."""


# A name that becomes part of a path (cache entries, output folders, run names): one
# path component of letters, digits and ._- only, never "." or "..".
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def require_safe_name(value: Any, key: str) -> None:
    """Refuse a name that could escape the folder it is joined to (``../x``, ``a/b``)."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise ConfigError(f"{key}={value!r} is not a safe name: use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit (it becomes part of file paths)")


def require_finite_positive(value: Any, key: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be > 0 and finite, got {value}")


def require_positive(obj: Any, *names: str, prefix: str = "model") -> None:
    """Refuse any of ``obj.<name>`` below 1, naming it as ``<prefix>.<name>``."""
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise ConfigError(f"{prefix}.{name} must be >= 1, got {value}")
