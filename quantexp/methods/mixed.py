"""``method=mixed``: the registry imports quantexp.methods.<name>; the method lives in
mixed_precision.py."""

from quantexp.methods.mixed_precision import MixedPrecision  # noqa: F401 (registers "mixed")
