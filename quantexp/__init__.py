"""quantexp: declarative experiment runner for neural-network quantization."""
