"""method=mixed: a dtype per layer, assigned by hand or solved from a sensitivity
analysis under a budget. The layer wrappers it builds on live in ``quantexp.quant``."""
