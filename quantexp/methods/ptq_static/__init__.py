"""method=ptq_static: PyTorch static int8 (FX graph mode, eager fallback)."""
