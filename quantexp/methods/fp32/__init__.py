"""method=fp32: the unquantized baseline (``config``: schema, ``method``: implementation)."""
