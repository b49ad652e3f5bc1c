"""Model families (one package each: ``quantexp/models/<family>/``), their offline
data and the fp32 cache. ``load_model(cfg, seed, cache_dir)`` is the entry point;
see ``zoo``."""

from quantexp._lazy import lazy_exports

__all__ = ["ModelBundle", "Split", "load_model"]
__getattr__ = lazy_exports(__name__, {"ModelBundle": "quantexp.models.base", "Split": "quantexp.models.base",
                                      "load_model": "quantexp.models.zoo"})
