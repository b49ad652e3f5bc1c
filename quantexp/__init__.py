"""quantexp: declarative experiment runner for neural-network quantization.

From Python (see README "From Python")::

    import quantexp
    results = quantexp.run("cnn", "ptq_static")        # what `python run.py` does
    quantized = quantexp.quantize(my_module, "ptq_dynamic")

Names are imported on first use, so ``import quantexp`` stays light.
"""

from quantexp._lazy import lazy_exports

__all__ = ["ConfigError", "ModelBundle", "QuantizedModel", "Results", "Split", "analyze", "compose", "quantize",
           "run"]
__getattr__ = lazy_exports(__name__, {
    "run": "quantexp.api", "quantize": "quantexp.api", "compose": "quantexp.api",
    "analyze": "quantexp.architecture.run",
    "Results": "quantexp.results", "ConfigError": "quantexp.config",
    "ModelBundle": "quantexp.models.base", "Split": "quantexp.models.base",
    "QuantizedModel": "quantexp.methods.base",
})
